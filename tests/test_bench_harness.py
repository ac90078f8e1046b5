"""The benchmark harness (bench/): measurement helpers, matched-KL scores, random models, command contracts."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoConfig, AutoModelForSequenceClassification, LlamaForCausalLM, PreTrainedTokenizerFast

from bench import compare
from bench.metrics import (
    binned_scores,
    kl_bin_edges,
    phase_shares,
    steady_episodes_per_second,
    update_times,
)
from bench.random_model import build_random_models, llama_config, llama_param_count, parse_param_count
from pipeline.config import DataArguments, ModelArguments, RunArguments, parse_config
from pipeline.errors import PipelineError
from pipeline.models import adapter_base, load_sequence_scorer
from stages.ppo.config import PPOConfig, PPOModelArguments

ROOT = Path(__file__).resolve().parent.parent
VARIANT = "ours-variant"


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A small BPE tokenizer with distinct pad/bos/eos/unk, trained on a few sentences."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<pad>", "<s>", "</s>", "<unk>"])
    tokenizer.train_from_iterator(["the film was great", "the food was awful", "a fine phone"] * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    folder = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(folder)
    return folder


def test_kl_bin_edges_cover_the_overlap_on_multiples_of_the_width():
    assert kl_bin_edges([0.5, 3.0, 9.0], [2.5, 6.1], 2.0) == pytest.approx([2.0, 4.0, 6.0, 8.0])
    assert kl_bin_edges([0.0, 1.0], [2.0, 3.0], 2.0) == []


def test_binned_scores_pool_updates_by_kl_whatever_their_order():
    # Unordered in time, as KL is along a real run.
    binned = binned_scores([3.0, 0.5, 1.5, 0.0, 3.9], [5.0, 1.0, 2.0, 3.0, 7.0], [0.0, 2.0, 4.0, 6.0])
    assert binned[0][0] == pytest.approx(2.0) and binned[0][2] == 3
    assert binned[0][1] == pytest.approx(1.0 / 3**0.5)  # stdev 1 over 3 updates
    assert binned[1][:1] == pytest.approx((6.0,)) and binned[1][2] == 2
    assert binned[2] == (None, None, 0)
    with pytest.raises(ValueError, match="2 KL values but 1 scores"):
        binned_scores([0.1, 0.5], [1.0], [0.0, 1.0])


def test_steady_rate_skips_the_first_update():
    records = [
        {"episode": 8, "elapsed_s": 30.0},
        {"episode": 16, "elapsed_s": 34.0},
        {"episode": 24, "elapsed_s": 38.0},
    ]
    assert steady_episodes_per_second(records) == pytest.approx(2.0)
    assert steady_episodes_per_second(records[:1]) is None


def test_phase_shares_skip_the_first_update_and_sum_to_one():
    records = [
        {"time/generation": 9.0, "time/update": 1.0},  # warm-up: left out
        {"time/generation": 2.0, "time/forward": 1.0, "time/update": 1.0},
        {"time/generation": 4.0, "time/forward": 1.0, "time/update": 1.0, "eps": 3.0},
    ]
    assert phase_shares(records) == pytest.approx({"generation": 0.6, "forward": 0.2, "update": 0.2})
    assert phase_shares([{"eps": 1.0}, {"eps": 2.0}]) == {}


def test_update_times_fall_back_to_cumulative_eps():
    assert update_times([{"episode": 8, "eps": 2}, {"episode": 16, "eps": 4}]) == pytest.approx([4.0, 4.0])
    with pytest.raises(ValueError, match="neither"):
        update_times([{"episode": 8, "eps": 0}])


def test_matched_kl_compares_bins_both_runs_fill():
    trl = [{"objective/kl": kl, "objective/scores": 1.0 + 0.1 * (i % 2)} for i, kl in enumerate([0.5] * 4 + [2.5] * 4)]
    ours = [{"objective/kl": kl, "objective/scores": 1.5 + 0.1 * (i % 2)} for i, kl in enumerate([0.4] * 4 + [5.0])]
    matched = compare.matched_kl(ours, trl, width=2.0, min_updates=3)
    assert [(b["kl_low"], b["ours"]["updates"], b["trl"]["updates"]) for b in matched["bins"]] == [
        (0.0, 4, 4),
        (2.0, 0, 4),
    ]
    assert matched["shared_bins"] == 1
    assert matched["difference"] == pytest.approx(0.5)
    assert matched["difference_stderr"] > 0


def test_quality_report_compares_each_of_our_variants_with_trl():
    trl = [{"objective/kl": 0.5 + i % 2, "objective/scores": 1.0, "episode": 16 * i} for i in range(8)]
    ours = [{**record, "objective/scores": 1.25} for record in trl]
    separate = [{**record, "objective/scores": 0.5} for record in trl]
    sides = {name: {"records": records} for name, records in (("ours", ours), ("trl", trl), ("ours-x", separate))}
    text, derived = compare.report(compare.scenarios()["quality"], sides)
    assert derived["matched_kl"]["difference"] == pytest.approx(0.25)
    assert derived["matched_kl_ours-x"]["difference"] == pytest.approx(-0.5)
    assert "ours - trl over the 1 bins" in text and "ours-x - trl over the 1 bins" in text


def _runs(offset: float, count: int, seed: int) -> list[list[dict]]:
    """Runs of 8 updates whose score follows KL (score = KL / 4 + offset) with per-run noise."""
    generator = torch.Generator().manual_seed(seed)
    runs = []
    for _ in range(count):
        shift = 0.2 * torch.randn((), generator=generator).item()  # a run-level deviation, shared by its updates
        runs.append([{"objective/kl": 0.5 + i, "objective/scores": (0.5 + i) / 4 + offset + shift} for i in range(8)])
    return runs


def test_permutation_test_tells_a_real_difference_from_run_to_run_noise():
    trl = _runs(0.0, 6, seed=0)
    ahead = compare.permutation_test(_runs(1.0, 6, seed=1), trl, permutations=200)
    assert ahead["p_value"] < 0.05 and 0 < ahead["null_sd"] < 1.0
    alike = compare.permutation_test(_runs(0.0, 6, seed=2), trl, permutations=200)
    assert alike["p_value"] > 0.2 and alike["runs"] == (6, 6)
    # Whole runs move together, so the run-level noise exceeds the per-bin standard error.
    flat = compare.matched_kl([r for run in _runs(0.0, 6, seed=2) for r in run], [r for run in trl for r in run])
    assert alike["null_sd"] > flat["difference_stderr"]


def test_quality_report_gives_the_run_level_noise():
    trl, ours = _runs(0.0, 3, seed=0), _runs(0.5, 3, seed=1)
    sides = {
        name: {
            "records": [r for run in runs for r in run],
            "runs": [
                {"seed": seed, "records": run, "load_average_before_after": (0.0, 0.0)} for seed, run in enumerate(runs)
            ],
        }
        for name, runs in (("ours", ours), ("trl", trl))
    }
    text, derived = compare.report(compare.scenarios()["quality"], sides)
    assert derived["matched_kl"]["run_level"]["runs"] == (3, 3)
    assert "run level (3 vs 3 runs relabelled at random)" in text


@pytest.mark.parametrize("name", ["speed", "speed-bf16", "quality"])
def test_ours_runs_one_base_with_the_reward_adapter_and_a_critic_from_it(name):
    scenario = compare.scenarios()[name]
    command = compare.ours_command(scenario, f"bench-{name}", 0)
    _, _, ppo_args, model_args = parse_config((RunArguments, DataArguments, PPOConfig, PPOModelArguments), command[3:])
    assert ppo_args.value_model == "adapter" and model_args.use_peft and ppo_args.reward == "rm"
    assert ppo_args.share_reward_base
    assert ppo_args.reward_model_path == str(scenario.reward_adapter) != str(scenario.reward)
    # The top quarter of the layers: 3 of the random model's 12, 1 of the tiny base's 4.
    assert ppo_args.value_adapter_layers == {"speed": 3, "speed-bf16": 3, "quality": 1}[name]
    # The value adapter learns at twice the policy's rate; trl 1.12's critic shares the policy's.
    assert ppo_args.value_learning_rate == pytest.approx(2 * ppo_args.learning_rate)
    assert "--value_learning_rate" not in compare.trl_command(scenario, Path("out.json"), 0)


def test_quality_also_runs_a_critic_started_from_scratch():
    scenario = compare.scenarios()["quality"]
    flags = list(scenario.ours_variants[compare.ZERO_CRITIC])
    command = compare.ours_command(scenario, "bench-quality", 0, flags)
    _, _, ppo_args, _ = parse_config((RunArguments, DataArguments, PPOConfig, PPOModelArguments), command[3:])
    assert not ppo_args.share_reward_base and ppo_args.reward_model_path == str(scenario.reward_adapter)


def test_speed_report_holds_each_of_our_sides_against_the_targets():
    def side(rate: float, peak: float) -> dict:
        return {"episodes_per_second": rate, "peak_rss_mb": peak, "wall_s": 1.0, "runs": []}

    sides = {"ours": side(1.8, 500), "trl": side(1.0, 1000), VARIANT: side(1.2, 700)}
    text, derived = compare.report(compare.scenarios()["speed"], sides)
    assert derived["episodes_per_second_ratio"] == pytest.approx(1.8)
    assert derived[f"episodes_per_second_ratio_{VARIANT}"] == pytest.approx(1.2)
    assert derived[f"peak_rss_ratio_{VARIANT}"] == pytest.approx(0.7)
    assert text.count("target >= 1.5: met") == 1 and text.count("target >= 1.5: MISSED") == 1
    assert text.count("target <= 0.6: met") == 1 and text.count("target <= 0.6: MISSED") == 1


def test_parse_param_count():
    assert parse_param_count("100M") == 100_000_000
    assert parse_param_count("1.5b") == 1_500_000_000
    assert parse_param_count("2500") == 2500
    with pytest.raises(PipelineError, match="not a size"):
        parse_param_count("lots")


def test_param_formula_matches_the_model(tokenizer_dir):
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    config = llama_config(tokenizer, 400_000, hidden=64, layers=2, heads=4)
    expected = llama_param_count(len(tokenizer), 64, 2, config.intermediate_size)
    assert LlamaForCausalLM(config).num_parameters() == expected
    assert abs(expected - 400_000) <= 3 * 64 * 2 * 64  # within one MLP rounding step of the target
    with pytest.raises(PipelineError, match="too small"):
        llama_config(tokenizer, 1_000, hidden=64, layers=2, heads=4)


def test_random_models_are_seeded_and_loadable(tokenizer_dir, tmp_path):
    shape = {"hidden": 64, "layers": 2, "heads": 4}
    counts = build_random_models(str(tokenizer_dir), tmp_path / "a", 400_000, seed=3, **shape)
    build_random_models(str(tokenizer_dir), tmp_path / "b", 400_000, seed=3, **shape, base_name="elsewhere")
    assert counts["reward"] == counts["policy"] + 64  # the score head replaces the tied LM head
    reward_config = AutoConfig.from_pretrained(tmp_path / "a" / "reward")
    assert reward_config.num_labels == 1 and reward_config.pad_token_id == 0
    first, second = (LlamaForCausalLM.from_pretrained(tmp_path / name) for name in ("a", "b"))
    for (name, weight), other in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(weight, other), name
    assert adapter_base(tmp_path / "a" / "reward-adapter") == str(tmp_path / "a")
    assert adapter_base(tmp_path / "b" / "reward-adapter") == "elsewhere"


def test_random_reward_adapter_and_merged_reward_model_score_alike(tokenizer_dir, tmp_path):
    """The two sides of the speed scenarios get the same reward function in two forms."""
    build_random_models(str(tokenizer_dir), tmp_path / "m", 400_000, seed=3, hidden=64, layers=2, heads=4)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    pad = tokenizer.pad_token_id
    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m" / "reward", num_labels=1)
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m", num_labels=1)
    adapter = load_sequence_scorer(str(tmp_path / "m" / "reward-adapter"), ModelArguments(dtype="float32"), pad)
    input_ids = torch.randint(4, len(tokenizer), (3, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = merged(input_ids=input_ids).logits
        torch.testing.assert_close(adapter(input_ids=input_ids).logits, expected)
        # ...and the adapter is not a no-op on the body: the body without it scores otherwise.
        plain.score.load_state_dict(merged.score.state_dict())
        assert not torch.allclose(plain(input_ids=input_ids).logits, expected)


def _flag(command: list[str], name: str) -> str:
    return command[command.index(f"--{name}") + 1]


@pytest.mark.parametrize("name", ["speed", "speed-bf16", "quality"])
def test_both_sides_get_the_same_settings(name):
    scenario = compare.scenarios()[name]
    ours = compare.ours_command(scenario, f"bench-{name}", seed=7)
    trl = compare.trl_command(scenario, Path("out.json"), seed=7)
    for key, value in {**scenario.settings, "seed": 7}.items():
        assert _flag(ours, key) == _flag(trl, key) == str(value), key
    assert ("--bf16" in trl) == scenario.bf16 and (_flag(ours, "bf16") == "true" if scenario.bf16 else True)
    assert _flag(ours, "sft_model_path") == _flag(trl, "policy")
    # The same reward model: ours as the LoRA adapter on the policy, trl's merged into a plain model.
    assert _flag(ours, "reward_model_path") == str(scenario.reward_adapter)
    assert _flag(trl, "reward") == str(scenario.reward)
    assert _flag(ours, "dataset_name") == _flag(trl, "prompts")
    assert "--lora" in trl and _flag(ours, "use_peft") == "true"
    assert _flag(ours, "lora_target_modules") == _flag(trl, "lora_target_modules")


@pytest.mark.parametrize("name", ["speed", "speed-bf16", "quality"])
def test_both_sides_sample_and_step_alike(name):
    """Same episodes per update and minibatch size, under each implementation's own batch arithmetic."""
    scenario = compare.scenarios()[name]
    keys = ("per_device_train_batch_size", "gradient_accumulation_steps", "num_mini_batches")
    ours = [int(_flag(compare.ours_batch_flags(scenario), key)) for key in keys]
    trl = [int(_flag(compare.trl_batch_flags(scenario), key)) for key in keys]
    # ours: update = micro x accumulation x minibatches; trl 1.12: update = micro x accumulation
    assert ours[0] * ours[1] * ours[2] == trl[0] * trl[1] == scenario.episodes_per_update
    assert ours[0] * ours[1] == trl[0] * trl[1] // trl[2]  # minibatch size


def test_run_measured_sees_the_childs_peak_memory_and_exit_code(tmp_path):
    allocate = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096]); raise SystemExit(3)"
    measured = compare.run_measured([sys.executable, "-c", allocate], tmp_path / "child.log")
    assert measured.returncode == 3
    assert 300 < measured.peak_rss_mb < 1000


def test_read_ours_keeps_update_records(tmp_path):
    lines = [{"episode": 8, "objective/kl": 0.1, "objective/scores": 1.0}, {"note": "not an update"}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "summary.json").write_text(json.dumps({"peak_memory_mb": 123.0}))
    result = compare.read_ours(tmp_path)
    assert result["records"] == lines[:1] and result["self_reported_peak_mb"] == 123.0


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / ".bench-venv-trl112" / ".bench-complete").exists(), reason="no reference venv")
def test_trl112_side_runs_and_reports(tokenizer_dir, tmp_path):
    build_random_models(str(tokenizer_dir), tmp_path / "model", 400_000, hidden=64, layers=2, heads=4)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the film was {i}"}) + "\n" for i in range(8)))
    scenario = compare.Scenario(
        name="tiny",
        description="tiny",
        policy=tmp_path / "model",
        reward=tmp_path / "model" / "reward",
        reward_adapter=tmp_path / "model" / "reward-adapter",
        prompts=prompts,
        episodes_per_update=4,
        num_mini_batches=2,
        settings={"response_length": 8, "total_episodes": 12, "num_ppo_epochs": 1, "dtype": "bfloat16"},
        bf16=True,
    )
    out = tmp_path / "result.json"
    measured = compare.run_measured(compare.trl_command(scenario, out, seed=3), tmp_path / "trl.log")
    assert measured.returncode == 0, (tmp_path / "trl.log").read_text()[-3000:]
    result = json.loads(out.read_text())
    assert [record["episode"] for record in result["records"]] == [4, 8, 12]
    assert result["episodes_per_second"] > 0 and result["peak_rss_mb"] > 100
    assert result["config"]["lora_r"] == 16 and result["versions"]["trl"] == "1.12.0"
    assert result["config"]["seed"] == 3 and result["config"]["dtype"] == "bfloat16" and result["config"]["bf16"]


def test_ours_extra_flags_come_last_and_win():
    scenario = compare.scenarios()["speed"]
    command = compare.ours_command(scenario, "bench-speed", 0, ["--value_adapter_layers", "0"])
    assert _flag(command, "value_adapter_layers") == str(scenario.value_adapter_layers)
    assert command[-2:] == ["--value_adapter_layers", "0"]
    _, _, ppo_args, _ = parse_config((RunArguments, DataArguments, PPOConfig, PPOModelArguments), command[3:])
    assert ppo_args.value_adapter_layers == 0 and ppo_args.value_model == "adapter"


def test_trl_extra_flags_come_last_after_the_output_file():
    """argparse keeps the last occurrence, so flags appended last override the scenario's (e.g. --value)."""
    scenario = compare.scenarios()["quality"]
    extra = ["--value", "runs/demo/sft/model", "--seed", "9"]
    command = compare.trl_command(scenario, Path("out.json"), 0, extra)
    assert command[-4:] == extra and _flag(command, "out") == "out.json"
    assert "--value" not in compare.trl_command(scenario, Path("out.json"), 0)


def test_pool_runs_takes_medians_the_largest_peak_and_every_record():
    runs = [
        {"seed": s, "wall_s": w, "peak_rss_mb": m, "episodes_per_second": e, "records": [{"step": s}]}
        for s, w, m, e in ((0, 10.0, 500.0, 2.0), (1, 30.0, 700.0, 1.0), (2, 20.0, 600.0, 4.0))
    ]
    pooled = compare.pool_runs(runs)
    assert pooled["episodes_per_second"] == 2.0 and pooled["wall_s"] == 20.0 and pooled["peak_rss_mb"] == 700.0
    assert [r["step"] for r in pooled["records"]] == [0, 1, 2]
    failed = compare.pool_runs([*runs[:2], {"seed": 2, "error": "exit code 1"}])
    assert failed["error"] == "exit code 1" and len(failed["runs"]) == 3
