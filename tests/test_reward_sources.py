"""Reward sources from their spec strings (reward_models.registry.build_reward_sources): vader, module:function, a
module:Class built with its reward_kwargs, a learned reward-model folder with its own tokenizer, weighted sums of
per-episode and per-token sources; bad specs, and rewards that fail, stop with a PipelineError saying what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

from pipeline.errors import PipelineError, run_main
from pipeline.metrics import read_metrics
from pipeline.tiny_base import build_model, train_tokenizer
from reward_models.base import Episodes, call_reward
from reward_models.learned import LearnedReward, load_learned_reward
from reward_models.registry import build_reward_sources, parse_reward_kwargs
from reward_models.vader import vader_reward
from stages.ppo.__main__ import reward_model_loader
from tests import rewards_for_tests
from tests.conftest import BOS_CHAT_TEMPLATE, DEMO_DATA, TINY_SIZE
from tests.ppo_testing import ppo_argv, run_ppo, tiny_reward_adapter, tiny_sft_model
from tests.rewards_for_tests import count_i

PROMPTS = ["Review of the cafe in Porto:", "How was the hostel?", "Rate the blender:"]
COMPLETIONS = [" I loved it, I would go again.", " Terrible, dirty and loud.", " Fine."]
RM_VOCAB = 600


@pytest.fixture(scope="module")
def own_tokenizer_rm(tmp_path_factory) -> Path:
    """A reward model whose tokenizer (a 600-token BPE) is not the policy's: policy token ids mean nothing to it."""
    out = tmp_path_factory.mktemp("rm") / "own-tokenizer-rm"
    tokenizer = train_tokenizer(DEMO_DATA, vocab_size=RM_VOCAB)
    build_model(tokenizer, seed=1, **TINY_SIZE).save_pretrained(out)
    tokenizer.save_pretrained(out)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = AutoModelForSequenceClassification.from_pretrained(out, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    return out


def rm_scores_one_by_one(folder: Path, prompts: list[str], completions: list[str]) -> list[float]:
    """What the reward model says about each prompt + completion + EOS on its own (no batching, no padding)."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        return [
            model(**tokenizer(p + c + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item()
            for p, c in zip(prompts, completions, strict=True)
        ]


def no_model(spec: str):
    raise AssertionError(f"{spec!r} should not load a reward model")


def loader(rm_source=None, batch_size: int = 8):
    return reward_model_loader(rm_source, None, "float32", batch_size=batch_size)


def text_episodes(prompts: list[str], completions: list[str], length: int = 4, **columns) -> Episodes:
    """Episodes as a text reward sees them (token tensors of the right shape, all responses of ``length`` tokens)."""
    count = len(completions)
    ones = torch.ones(count, length)
    return Episodes(
        prompts=prompts,
        completions=completions,
        columns=columns,
        input_ids=torch.zeros(count, length + 2, dtype=torch.long),
        attention_mask=torch.ones(count, length + 2, dtype=torch.long),
        responses=torch.zeros(count, length, dtype=torch.long),
        response_mask=ones,
        last_index=torch.full((count,), length - 1),
        ended=torch.ones(count, dtype=torch.bool),
    )


def scores_of(specs: str, weights: str | None = None, load=no_model, kwargs=None) -> torch.Tensor:
    sources = build_reward_sources(specs, weights, load, parse_reward_kwargs(kwargs, specs.split(",")))
    return sources(text_episodes(PROMPTS, COMPLETIONS)).scores


def test_vader_scores_sentiment():
    scores = scores_of("vader").tolist()
    assert all(-1 <= s <= 1 for s in scores)
    assert scores[0] > 0.3 and scores[1] < -0.3, scores


def test_module_function_spec_imports_the_callable():
    sources = build_reward_sources("tests.rewards_for_tests:count_i", None, no_model)
    assert sources.sources == [count_i] and sources.names == ["count_i"]
    assert scores_of("tests.rewards_for_tests:count_i").tolist() == [2.0, 0.0, 0.0]


def test_module_class_is_built_with_its_kwargs_and_a_function_called_with_them():
    target = '{"tests.rewards_for_tests:LengthTarget": {"target": 6}}'
    # |len - 6|: " I loved it, I would go again." 30 -> -24 ; " Terrible, dirty and loud." 26 -> -20 ; " Fine." 6 -> 0
    assert scores_of("tests.rewards_for_tests:LengthTarget", kwargs=target).tolist() == [-24.0, -20.0, -0.0]
    scaled = '{"tests.rewards_for_tests:scaled_length": {"scale": 0.5}}'
    assert scores_of("tests.rewards_for_tests:scaled_length", kwargs=scaled).tolist() == [15.0, 13.0, 3.0]


def test_per_token_rewards_and_scores_sum_by_weight_separately():
    episodes = text_episodes(PROMPTS, COMPLETIONS)
    sources = build_reward_sources(
        "tests.rewards_for_tests:FirstTokenBonus,tests.rewards_for_tests:count_i", "2,1", no_model
    )
    rewards = sources(episodes)
    assert rewards.scores.tolist() == [2.0, 0.0, 0.0]  # count_i
    assert rewards.token_rewards.tolist() == [[2.0, 0.0, 0.0, 0.0]] * 3  # 2 x a bonus of 1 on each first token
    assert rewards.totals.tolist() == [4.0, 2.0, 2.0]
    assert set(rewards.by_source) == {"FirstTokenBonus", "count_i"}


def test_learned_reward_model_folder_retokenizes_with_its_own_tokenizer(own_tokenizer_rm, tiny_base):
    policy_tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    assert len(AutoTokenizer.from_pretrained(own_tokenizer_rm)) == RM_VOCAB < len(policy_tokenizer)
    # A batch of 2 pads the shorter text: the score must still be read at its own EOS.
    scores = scores_of(str(own_tokenizer_rm), load=loader(batch_size=2))

    expected = rm_scores_one_by_one(own_tokenizer_rm, PROMPTS, COMPLETIONS)
    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=0)
    assert len(set(expected)) == len(expected), "a constant reward model cannot tell texts apart"


def test_rm_spec_is_the_runs_reward_model(own_tokenizer_rm):
    scores = scores_of("rm", load=loader(str(own_tokenizer_rm)))
    torch.testing.assert_close(scores, torch.tensor(rm_scores_one_by_one(own_tokenizer_rm, PROMPTS, COMPLETIONS)))


def test_conversational_rows_are_scored_on_the_ids_the_reward_trainer_trained_on(own_tokenizer_rm, tmp_path):
    """The chat template writes the BOS: the reward model must see it once, as TRL's RewardTrainer tokenizes the
    same rows for training, not a second one from the tokenizer's own special tokens."""
    tokenizer = AutoTokenizer.from_pretrained(own_tokenizer_rm)
    tokenizer.chat_template = BOS_CHAT_TEMPLATE
    model = AutoModelForSequenceClassification.from_pretrained(own_tokenizer_rm).eval()
    prompts = [[{"role": "user", "content": prompt}] for prompt in PROMPTS]
    completions = [[{"role": "assistant", "content": completion}] for completion in COMPLETIONS]
    rows = Dataset.from_dict({"prompt": prompts, "chosen": completions, "rejected": completions[::-1]})
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(output_dir=str(tmp_path), report_to="none", bf16=False),
        train_dataset=rows,
        processing_class=tokenizer,
    )
    trained_on = trainer.train_dataset["chosen_ids"]
    assert [ids.count(tokenizer.bos_token_id) for ids in trained_on] == [1, 1, 1]
    with torch.no_grad():
        expected = [model(input_ids=torch.tensor([ids])).logits[0, 0].item() for ids in trained_on]

    scores = LearnedReward(model, tokenizer, batch_size=2)(prompts, completions)

    torch.testing.assert_close(scores, torch.tensor(expected), atol=1e-5, rtol=0)


def test_load_learned_reward_from_a_folder_is_frozen(own_tokenizer_rm):
    reward = load_learned_reward(str(own_tokenizer_rm), "float32", batch_size=2, device="cpu")
    expected = rm_scores_one_by_one(own_tokenizer_rm, PROMPTS, COMPLETIONS)
    torch.testing.assert_close(reward(PROMPTS, COMPLETIONS), torch.tensor(expected), atol=1e-5, rtol=0)
    assert len(AutoTokenizer.from_pretrained(own_tokenizer_rm)) == len(reward.tokenizer) == RM_VOCAB
    assert not reward.model.training and not any(p.requires_grad for p in reward.model.parameters())


@pytest.mark.parametrize("with_tokenizer", [True, False], ids=["adapter-tokenizer", "base-tokenizer"])
def test_load_learned_reward_applies_a_lora_adapter_to_its_base(tiny_base, tmp_path, with_tokenizer):
    from peft import PeftModel

    adapter = tiny_reward_adapter(tiny_base, tmp_path / "adapter")
    if not with_tokenizer:  # a PEFT adapter saved on its own: its base's tokenizer is used
        for file in adapter.iterdir():
            if file.name.startswith(("tokenizer", "special_tokens", "chat_template")):
                file.unlink()
    reward = load_learned_reward(str(adapter), "float32", batch_size=8, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    scorer = PeftModel.from_pretrained(
        AutoModelForSequenceClassification.from_pretrained(tiny_base, num_labels=1), adapter
    ).eval()
    scorer.config.pad_token_id = tokenizer.pad_token_id
    with torch.no_grad():
        expected = [
            scorer(**tokenizer(p + c + tokenizer.eos_token, return_tensors="pt")).logits[0, 0].item()
            for p, c in zip(PROMPTS, COMPLETIONS, strict=True)
        ]
    torch.testing.assert_close(reward(PROMPTS, COMPLETIONS), torch.tensor(expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("path", "message"),
    [("./no/such/reward-model", r"does not exist"), ("some-org/some-reward-model", r"no hub is reachable")],
)
def test_load_learned_reward_names_what_is_missing(path, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match=message):
        load_learned_reward(path, "float32", 8, "cpu")


def test_weighted_sum_of_two_sources():
    expected = [
        0.5 * v + 2 * c for v, c in zip(vader_reward(PROMPTS, COMPLETIONS), count_i(PROMPTS, COMPLETIONS), strict=True)
    ]
    # "vader, rm"-style specs with spaces: stripped wherever they are read
    torch.testing.assert_close(scores_of("vader, tests.rewards_for_tests:count_i", "0.5,2"), torch.tensor(expected))


def test_ppo_optimizes_a_weighted_sum_with_a_foreign_tokenizer_reward_model(
    own_tokenizer_rm, tiny_base, tmp_path_factory, tmp_path
):
    """End to end: the stage scores its samples with 0.5 * vader + 2 * (a reward model with another tokenizer)."""
    sft_model = tiny_sft_model(tiny_base, tmp_path_factory.getbasetemp())
    run_ppo(
        ppo_argv(tmp_path, "r", sft_model, reward=f"vader,{own_tokenizer_rm}", reward_weights="0.5,2", sample_every=1)
    )
    samples = read_metrics(tmp_path / "r" / "ppo" / "samples.jsonl")
    prompts, completions = [s["prompt"] for s in samples], [s["completion"] for s in samples]
    expected = [
        0.5 * v + 2 * r
        for v, r in zip(
            vader_reward(prompts, completions),
            rm_scores_one_by_one(own_tokenizer_rm, prompts, completions),
            strict=True,
        )
    ]
    assert [s["score"] for s in samples] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize(
    ("spec", "weights", "message"),
    [
        ("no_such_module_xyz:reward", None, r"cannot import module 'no_such_module_xyz'"),
        ("tests.rewards_for_tests:no_such_reward", None, r"has no callable 'no_such_reward'"),
        (" , ", None, r"reward is empty"),
        ("vader,tests.rewards_for_tests:count_i", "1", r"2 reward sources but 1 reward_weights"),
        ("vader,tests.rewards_for_tests:count_i", "1,heavy", r"reward_weights '1,heavy'"),
        ("./no/such/reward-model", None, r"does not exist"),
        ("some-org/some-reward-model", None, r"no hub is reachable"),
        ("rm", None, r"`make rm`"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec, weights, message, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PipelineError, match=message):
        build_reward_sources(spec, weights, loader())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ("{not json", r"reward_kwargs is not valid JSON"),
        ('{"vader": 3}', r"must map each reward spec to an object"),
        ('{"tests.rewards_for_tests:count_i": {"x": 1}, "other:spec": {}}', r"names \['other:spec'\]"),
    ],
)
def test_bad_reward_kwargs_say_what_is_wrong(kwargs, message):
    with pytest.raises(PipelineError, match=message):
        parse_reward_kwargs(kwargs, ["tests.rewards_for_tests:count_i"])


def test_reward_with_the_wrong_number_of_scores_is_named():
    episodes = text_episodes(PROMPTS, COMPLETIONS)
    with pytest.raises(PipelineError, match=r"'one_score_too_few' returned 2 scores for 3 completions"):
        call_reward(rewards_for_tests.one_score_too_few, episodes)
    weighted = build_reward_sources("vader,tests.rewards_for_tests:one_score_too_few", None, no_model)
    with pytest.raises(PipelineError, match=r"'one_score_too_few' returned 2 scores for 3 completions"):
        weighted(episodes)


def test_a_reward_that_raises_is_named_after_its_own_traceback(capsys):
    """The user's traceback is kept (it points into their code), and the last line names the reward."""
    sources = build_reward_sources("tests.rewards_for_tests:raises_value_error", None, no_model)

    def run(argv):
        sources(text_episodes(PROMPTS, COMPLETIONS))

    with pytest.raises(SystemExit) as stopped:
        run_main(run)
    assert stopped.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "rewards_for_tests.py" in "\n".join(err) and "ValueError: no score for" in "\n".join(err)
    assert (
        err[-1]
        == "error: reward 'raises_value_error' failed: ValueError: no score for ' I loved it, I would go again.'"
    )
