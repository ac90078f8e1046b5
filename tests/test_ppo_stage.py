"""The PPO stage in one process on the tiny model: run folder, first-minibatch sanity, value layouts, full
fine-tuning, QLoRA, adaptive KL control, non-finite stops and missing inputs."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

import stages.ppo.__main__ as ppo_stage
from pipeline.config import ModelArguments
from pipeline.errors import PipelineError, run_main
from pipeline.metrics import read_metrics
from tests import rewards_for_tests
from tests.ppo_testing import (
    FAST_OPTIONS,
    RecordingTrainer,
    ppo_argv,
    run_ppo,
    tiny_reward_adapter,
    tiny_reward_model,
)


@pytest.fixture(scope="module")
def reward_model(tiny_base, tmp_path_factory) -> Path:
    return tiny_reward_model(tiny_base, tmp_path_factory.mktemp("rm") / "model")


@pytest.fixture(scope="module")
def reward_adapter(sft_model, tmp_path_factory) -> Path:
    """A reward model trained as a LoRA adapter on the SFT model (as the demo's RM stage trains it)."""
    return tiny_reward_adapter(sft_model, tmp_path_factory.mktemp("rm") / "adapter")


@pytest.fixture
def recording(monkeypatch) -> type[RecordingTrainer]:
    """Make the stage build a RecordingTrainer; ``RecordingTrainer.latest`` is the trainer of the last run."""
    monkeypatch.setattr(ppo_stage, "PPOTrainer", RecordingTrainer)
    RecordingTrainer.latest = None
    return RecordingTrainer


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> set[str]:
    return {name for name in before if not torch.equal(before[name], after[name])}


def assert_trains_exactly_the_trainable(trainer: RecordingTrainer) -> set[str]:
    """Every trained tensor moved and every other one did not; returns the trained names."""
    trainable = set(trainer.trainable("before"))
    moved = changed(trainer.before, trainer.after)
    assert trainable, "nothing is trainable"
    assert moved == trainable, (sorted(trainable - moved)[:5], sorted(moved - trainable)[:5])
    return trainable


def test_run_folder_and_first_minibatch_sanity(sft_model, tmp_path):
    """The very first minibatch of every update sees the policy that sampled the rollout: ratio 1, approx-KL 0."""
    records = run_ppo(ppo_argv(tmp_path, "r", sft_model, sample_every=1))

    assert [r["step"] for r in records] == [1, 2, 3]
    for record in records:
        assert abs(record["first/ratio"] - 1) < 1e-5, record["first/ratio"]
        assert record["first/approxkl"] < 1e-8, record["first/approxkl"]
    # ...while later minibatches do move away from it, so the two numbers above are not constants.
    assert max(r["policy/approxkl_avg"] for r in records) > 1e-5
    assert [r["episode"] for r in records] == [8, 16, 24]
    final = tmp_path / "r" / "ppo"
    assert not (tmp_path / "r" / ".ppo.partial").exists()
    summary = json.loads((final / "summary.json").read_text())
    assert summary["updates"] == 3 and summary["value_model"] == "adapter" and summary["lora"] is True
    for required in (
        "adapter/adapter_config.json",
        "model/config.json",
        "value/adapter_config.json",
        "value/value_head.safetensors",
    ):
        assert (final / required).is_file(), required
    for plot in ("score", "kl", "critic"):
        assert (final / "plots" / f"{plot}.png").is_file(), plot
    samples = read_metrics(final / "samples.jsonl")
    assert {s["update"] for s in samples} == {1, 2, 3} and all("gold_score" in s for s in samples)
    for name in ("objective/kl", "objective/scores", "objective/rlhf_reward", "loss/policy_avg", "loss/value_avg"):
        assert all(name in r for r in records), name
    # The critic starts at 0 (zero-initialized head), so it explains none of the first rollout's returns.
    assert records[0]["val/explained_variance"] == 0.0


def test_adapter_layout_trains_both_adapters_and_head_not_the_base(sft_model, tmp_path, recording):
    run_ppo(ppo_argv(tmp_path, "r", sft_model, value_model="adapter", total_episodes=16))
    trainer = recording.latest
    trained = assert_trains_exactly_the_trainable(trainer)
    groups = {
        "policy adapter": {n for n in trained if "lora_" in n and ".default." in n},
        "value adapter": {n for n in trained if "lora_" in n and ".value." in n},
        "value head": {n for n in trained if n.startswith("value_head.")},
    }
    assert all(groups.values()), {k: len(v) for k, v in groups.items()}
    assert set().union(*groups.values()) == trained
    # One base: the policy's own transformer holds every non-LoRA weight, and none of them moved.
    base = set(trainer.before) - trained
    assert base and all(n.startswith("policy.") and "lora_" not in n for n in base)


def test_saved_merged_policy_is_the_base_plus_the_policy_adapter_only(sft_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run_ppo(ppo_argv(tmp_path, "r", sft_model, learning_rate=1e-2, total_episodes=16))
    final = tmp_path / "r" / "ppo"
    ids = torch.randint(3, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(final / "model")(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(sft_model)
        sft = base(input_ids=ids).logits
        with_adapter = PeftModel.from_pretrained(base, final / "adapter")(input_ids=ids).logits
    assert (merged - sft).abs().max() > 1e-3, "training changed nothing, so the check below proves nothing"
    torch.testing.assert_close(merged, with_adapter, atol=1e-4, rtol=1e-4)


def test_separate_value_model_from_a_reward_model_folder(sft_model, reward_model, tmp_path, recording):
    records = run_ppo(
        ppo_argv(
            tmp_path,
            "r",
            sft_model,
            value_model="separate",
            value_adapter_layers=0,
            reward_model_path=reward_model,
            total_episodes=16,
        )
    )
    trainer = recording.latest
    trained = assert_trains_exactly_the_trainable(trainer)
    assert {n for n in trained if n.startswith("value_model.") and "score" in n}, "value head not trained"
    assert {n for n in trained if n.startswith("value_model.") and "lora_" in n}
    assert {n for n in trained if n.startswith("policy.") and "lora_" in n}
    assert all(r["loss/value_avg"] > 0 for r in records)
    value_dir = tmp_path / "r" / "ppo" / "value"
    assert json.loads((value_dir / "adapter_config.json").read_text())["task_type"] == "SEQ_CLS"


def test_reward_adapter_on_the_policy_base(sft_model, reward_adapter, tmp_path, recording, monkeypatch):
    """A LoRA reward model on the SFT model goes on the policy's base: no second model is loaded, the rewards are its
    scores of the policy's tokens (before and after the value trained), and the critic starts from it."""
    from pipeline.models import load_sequence_scorer
    from stages.ppo.modeling import position_ids_from

    def no_second_model(*args, **kwargs):
        raise AssertionError("a second reward or value model was loaded")

    monkeypatch.setattr("stages.ppo.build.load_sequence_scorer", no_second_model)
    monkeypatch.setattr("stages.ppo.__main__.load_learned_reward", no_second_model)
    options = {"reward": "rm", "reward_model_path": reward_adapter, "value_adapter_layers": 1}
    records = run_ppo(ppo_argv(tmp_path, "r", sft_model, **options))
    trainer = recording.latest
    trained = assert_trains_exactly_the_trainable(trainer)  # the reward adapter is in the snapshots and stays put
    assert any(".reward." in name for name in trainer.before)
    assert not any(".reward." in name or name.startswith("reward_head") for name in trained)
    summary = json.loads((tmp_path / "r" / "ppo" / "summary.json").read_text())
    assert summary["reward_on_policy_base"] is True and summary["critic_from_reward_model"] is True
    # the critic starts as the reward model's readings of each prefix (a fresh one would start at 0)
    assert records[0]["val/value_mean"] != 0 and records[0]["val/explained_variance"] != 0
    pad = AutoTokenizer.from_pretrained(sft_model).pad_token_id
    merged = load_sequence_scorer(str(reward_adapter), ModelArguments(dtype="float32"), pad)
    for rollout in trainer.rollouts:
        mask = rollout["attention_mask"]
        with torch.no_grad():
            ids = rollout["input_ids"]
            expected = merged(input_ids=ids, attention_mask=mask, position_ids=position_ids_from(mask)).logits[:, 0]
        torch.testing.assert_close(rollout["raw_scores"], expected, atol=1e-5, rtol=1e-4)


def test_normalized_scores_from_the_reward_adapter_have_the_reference_mean_removed(
    sft_model, reward_adapter, tmp_path, recording
):
    """normalize_reward scores reference samples with the reward adapter too, and shifts every score by their mean."""
    options = {"reward": "rm", "reward_model_path": reward_adapter, "normalize_reward": "true", "total_episodes": 16}
    records = run_ppo(ppo_argv(tmp_path, "r", sft_model, normalize_reward_samples=16, **options))
    offset = recording.latest.progress.reward_offset
    assert offset != 0 and math.isfinite(offset)
    for record, rollout in zip(records, recording.latest.rollouts, strict=True):
        assert record["objective/raw_scores"] - record["objective/scores"] == pytest.approx(offset, abs=1e-5)
        assert record["objective/raw_scores"] == pytest.approx(rollout["raw_scores"].mean().item(), abs=1e-5)


def test_a_full_reward_model_stays_a_model_of_its_own_and_the_summary_says_why(sft_model, reward_model, tmp_path):
    run_ppo(ppo_argv(tmp_path, "r", sft_model, reward="rm", reward_model_path=reward_model, total_episodes=8))
    summary = json.loads((tmp_path / "r" / "ppo" / "summary.json").read_text())
    assert summary["reward_on_policy_base"] is False and summary["critic_from_reward_model"] is False
    assert "is a full model, not a LoRA adapter" in summary["reward_not_on_policy_base"]


def test_value_learning_rate_applies_to_the_value_parameters_only(sft_model, tmp_path, recording):
    run_ppo(ppo_argv(tmp_path, "r", sft_model, value_learning_rate=2e-3, total_episodes=8))
    trainer = recording.latest
    model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
    value = {id(p) for p in model.value_parameters()}
    groups = [({id(p) for p in group["params"]}, group["initial_lr"]) for group in trainer.optimizer.param_groups]
    value_groups = [lr for ids, lr in groups if ids <= value]
    policy_groups = [lr for ids, lr in groups if not ids & value]
    assert len(value_groups) + len(policy_groups) == len(groups), "a group mixes value and policy parameters"
    assert value_groups and set(value_groups) == {2e-3}
    assert policy_groups and set(policy_groups) == {FAST_OPTIONS["learning_rate"]}
    assert value <= set().union(*(ids for ids, _ in groups))


def test_value_model_must_share_the_policy_tokenizer(sft_model, tmp_path):
    """The value model reads the policy's token ids: one with another vocabulary is refused before training."""
    other = tmp_path / "other-vocab"
    shutil.copytree(sft_model, other)  # a model folder (config and weights) whose tokenizer maps tokens elsewhere
    tokenizer = AutoTokenizer.from_pretrained(sft_model)
    tokenizer.add_tokens(["zzzz"])
    tokenizer.save_pretrained(other)
    vocab = json.loads((other / "tokenizer.json").read_text())
    vocab["model"]["vocab"] = {
        token: (i + 1) % len(vocab["model"]["vocab"]) for token, i in vocab["model"]["vocab"].items()
    }
    (other / "tokenizer.json").write_text(json.dumps(vocab))
    with pytest.raises(PipelineError, match="value_model 'separate' reads the policy's token ids"):
        run_ppo(
            ppo_argv(tmp_path, "r", sft_model, value_model="separate", value_adapter_layers=0, value_model_path=other)
        )


def test_full_fine_tune_keeps_a_frozen_reference_copy(sft_model, reward_model, tmp_path, recording):
    records = run_ppo(
        ppo_argv(
            tmp_path,
            "r",
            sft_model,
            use_peft="false",
            value_model="separate",
            value_adapter_layers=0,
            reward_model_path=reward_model,
            learning_rate=1e-4,
            total_episodes=16,
        )
    )
    trainer = recording.latest
    trained = assert_trains_exactly_the_trainable(trainer)
    assert trained == set(trainer.before), "full fine-tuning trains every policy and value weight"
    assert changed(trainer.reference_before, trainer.reference_after) == set()
    policy = {n.removeprefix("policy."): t for n, t in trainer.before.items() if n.startswith("policy.")}
    assert all(torch.equal(policy[n], t) for n, t in trainer.reference_before.items()), "reference != SFT model"
    # The second rollout is sampled by the updated policy: it is now measurably away from the frozen reference.
    assert records[0]["objective/kl"] == 0 and records[1]["objective/kl"] != 0
    summary = json.loads((tmp_path / "r" / "ppo" / "summary.json").read_text())
    assert summary["lora"] is False and (tmp_path / "r" / "ppo" / "model" / "model.safetensors").is_file()


def test_qlora_policy_runs_on_cpu(sft_model, tmp_path, recording):
    import bitsandbytes as bnb

    run_ppo(ppo_argv(tmp_path, "r", sft_model, load_in_4bit="true", total_episodes=16))
    trainer = recording.latest
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.policy.modules()), "policy not 4-bit"
    assert_trains_exactly_the_trainable(trainer)
    assert (tmp_path / "r" / "ppo" / "model" / "config.json").is_file()


def test_bf16_base_under_mixed_precision(sft_model, tmp_path, recording):
    """A bfloat16 base under bf16 autocast: the adapters and the head stay float32 and train, the base does not
    move, the first minibatch still sees the sampling policy, and the merged policy is saved in bfloat16."""
    options = {"dtype": "bfloat16", "bf16": "true", "use_cpu": "true", "total_episodes": 16}
    records = run_ppo(ppo_argv(tmp_path, "r", sft_model, **options))
    trainer = recording.latest
    trained = assert_trains_exactly_the_trainable(trainer)
    assert {trainer.after[name].dtype for name in trained} == {torch.float32}
    assert {trainer.before[name].dtype for name in set(trainer.before) - trained} == {torch.bfloat16}
    for record in records:
        assert abs(record["first/ratio"] - 1) < 1e-3, record["first/ratio"]
        assert math.isfinite(record["loss/policy_avg"]) and math.isfinite(record["loss/value_avg"])
    merged = json.loads((tmp_path / "r" / "ppo" / "model" / "config.json").read_text())
    assert merged["dtype"] == "bfloat16"


def test_gradient_accumulation_takes_one_optimizer_step_per_minibatch(sft_model, tmp_path, recording):
    # 2 updates x 2 epochs x 2 minibatches of (2 rows x 2 accumulation steps): 8 optimizer steps, not 16.
    run_ppo(
        ppo_argv(
            tmp_path,
            "r",
            sft_model,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            num_mini_batches=2,
            num_ppo_epochs=2,
            total_episodes=16,
        )
    )
    steps = {int(state["step"]) for state in recording.latest.optimizer.optimizer.state.values()}
    assert steps == {8}, steps


def test_adaptive_kl_controller_moves_beta(sft_model, tmp_path):
    target, horizon = 0.5, 40
    records = run_ppo(
        ppo_argv(
            tmp_path,
            "r",
            sft_model,
            kl_control="adaptive",
            kl_coef=0.2,
            kl_target=target,
            kl_horizon=horizon,
            total_episodes=32,
        )
    )
    betas = [r["objective/kl_coef"] for r in records]
    assert betas[0] == 0.2 and len(set(betas)) == len(betas), betas
    for previous, beta in zip(records, betas[1:], strict=False):
        error = min(max(previous["objective/kl"] / target - 1, -0.2), 0.2)
        assert beta == pytest.approx(previous["objective/kl_coef"] * (1 + error * 8 / horizon), rel=1e-9)


@pytest.mark.parametrize("bad", ["nan", "inf"])
def test_non_finite_reward_stops_with_exit_2_and_keeps_the_checkpoint(sft_model, tmp_path, capsys, bad):
    reward = getattr(rewards_for_tests, f"{bad}_from_third_call")
    reward.calls = 0
    argv = ppo_argv(
        tmp_path,
        "r",
        sft_model,
        reward=f"tests.rewards_for_tests:{bad}_from_third_call",
        save_strategy="steps",
        save_steps=2,
        total_episodes=40,
    )
    with pytest.raises(SystemExit) as stopped:
        run_main(ppo_stage.main, argv)

    assert stopped.value.code == 2
    message = capsys.readouterr().err
    checkpoint = tmp_path / "r" / ".ppo.partial" / "checkpoints" / "checkpoint-2"
    assert f"non-finite objective/scores ({bad}) at update 3" in message, message
    assert str(checkpoint) in message, message
    assert (checkpoint / "model.safetensors").is_file()
    assert not (tmp_path / "r" / "ppo").exists()


def test_missing_sft_stage_names_the_make_target(tmp_path):
    with pytest.raises(PipelineError, match=r"`make sft RUN=nosft`"):
        ppo_stage.main(ppo_argv(tmp_path, "nosft", None))
    assert not (tmp_path / "nosft").exists(), "the stage started before checking its inputs"


def test_missing_reward_model_names_the_make_target(sft_model, tmp_path):
    with pytest.raises(PipelineError, match=r"`make rm RUN=norm`"):
        ppo_stage.main(ppo_argv(tmp_path, "norm", sft_model, reward="rm"))
    assert not (tmp_path / "norm").exists()


def test_value_adapter_without_lora_is_refused(sft_model, tmp_path):
    with pytest.raises(PipelineError, match="value_model separate"):
        ppo_stage.main(ppo_argv(tmp_path, "r", sft_model, use_peft="false", value_model="adapter"))


def count_layer_calls(trainer_class: type[RecordingTrainer]) -> type[RecordingTrainer]:
    """A recording trainer that counts forward calls inside the policy's first decoder layer (its MLP: hooks on the
    layer itself stay outside the checkpoint) and checks that training passes run in training mode."""

    class Counting(trainer_class):
        def train(self):
            self.layer_calls = 0
            self.checked_modes = 0
            layer = self.model.policy.get_base_model().model.layers[0].mlp

            def count(module, args, kwargs):
                self.layer_calls += 1
                if torch.is_grad_enabled():
                    assert module.training, "a training pass ran in eval mode: gradient checkpointing would be off"
                    self.checked_modes += 1

            handle = layer.register_forward_pre_hook(count, with_kwargs=True)
            try:
                return super().train()
            finally:
                handle.remove()

    return Counting


def test_gradient_checkpointing_recomputes_the_forward_and_dropout_stays_off(sft_model, tmp_path, monkeypatch):
    """Bug: the model stayed in eval mode, where transformers skips checkpointing, so --gradient_checkpointing true
    did nothing. With it, every training pass is run again in its backward; without it, it is not."""
    calls = {}
    for checkpointing in ("false", "true"):
        monkeypatch.setattr(ppo_stage, "PPOTrainer", count_layer_calls(RecordingTrainer))
        records = run_ppo(ppo_argv(tmp_path, checkpointing, sft_model, gradient_checkpointing=checkpointing))
        trainer = RecordingTrainer.latest
        calls[checkpointing] = trainer.layer_calls
        assert trainer.checked_modes > 0
        dropouts = [m.p for m in trainer.model.modules() if isinstance(m, torch.nn.Dropout)]
        assert all(p == 0 for p in dropouts), dropouts
        assert all(abs(r["first/ratio"] - 1) < 1e-5 for r in records)
    # 3 updates x 2 epochs x 2 minibatches of policy passes, each recomputed once in its backward.
    assert calls["true"] == calls["false"] + 3 * 2 * 2, calls


def test_reward_specs_with_spaces_find_the_reward_model(sft_model, reward_adapter, tmp_path):
    """Bug: '--reward "vader, rm"' missed the ' rm' when deciding which reward model to load, and then failed
    saying no reward model was given."""
    run_ppo(ppo_argv(tmp_path, "r", sft_model, reward="vader, rm", reward_model_path=reward_adapter, total_episodes=8))
    summary = json.loads((tmp_path / "r" / "ppo" / "summary.json").read_text())
    assert summary["reward_on_policy_base"] is True


def interrupted_run(sft_model, tmp_path) -> list[str]:
    """A run stopped at update 3 by a non-finite reward, with its checkpoint of update 2 left in .ppo.partial."""
    rewards_for_tests.nan_from_third_call.calls = 0
    argv = ppo_argv(
        tmp_path,
        "r",
        sft_model,
        reward="tests.rewards_for_tests:nan_from_third_call",
        save_strategy="steps",
        save_steps=2,
        total_episodes=40,
    )
    with pytest.raises(PipelineError, match="non-finite"):
        ppo_stage.main(argv)
    assert (tmp_path / "r" / ".ppo.partial" / "checkpoints" / "checkpoint-2").is_dir()
    return argv


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        ({"per_device_train_batch_size": 2, "num_mini_batches": 4}, r"per_device_train_batch_size: 4 there, 2 now"),
        ({"lora_r": 8}, r"other shapes \['policy\.base_model"),
        ({"value_adapter_layers": 0}, r"value_adapter_layers: 1 there, None now"),
    ],
)
def test_resume_refuses_a_checkpoint_of_other_settings(sft_model, tmp_path, changed, message):
    """A checkpoint's layout, batch arithmetic and parameter shapes must match the resuming run: never a silent
    fresh start of the weights it cannot load."""
    argv = interrupted_run(sft_model, tmp_path)
    extra = [item for name, value in changed.items() for item in (f"--{name}", str(value))]
    with pytest.raises(PipelineError, match=message):
        ppo_stage.main([*argv, *extra, "--resume_from_checkpoint", "latest"])


def test_resuming_a_completed_stage_says_it_is_complete(sft_model, tmp_path):
    argv = ppo_argv(tmp_path, "r", sft_model, save_strategy="steps", save_steps=1, total_episodes=8)
    run_ppo(argv)
    with pytest.raises(PipelineError, match=r"already complete .*start afresh"):
        ppo_stage.main([*argv, "--resume_from_checkpoint", "latest"])
    assert (tmp_path / "r" / "ppo" / "summary.json").is_file() and not (tmp_path / "r" / ".ppo.partial").exists()
