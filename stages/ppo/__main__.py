"""PPO stage: optimize the SFT policy against reward sources with a KL penalty to the SFT reference.

Run: ``accelerate launch -m stages.ppo --config configs/<preset>/ppo.yaml [--field value ...]`` (or through
``python -m pipeline.launch``, which takes the same arguments and ends a failed run with its own message).
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoTokenizer, PreTrainedTokenizerBase, set_seed

from pipeline.config import DataArguments, RunArguments, parse_config
from pipeline.datasets import load_prompt_data
from pipeline.errors import PipelineError, run_main
from pipeline.metrics import JsonlMetricsCallback, plot_curves, read_metrics
from pipeline.models import is_lora_adapter, load_tokenizer, resolve_model_source
from pipeline.report import refresh_report
from pipeline.runs import METRICS, StageDir, begin_stage, end_stage, require_complete
from reward_models.learned import load_learned_reward
from reward_models.policy_base import PolicyBaseReward
from reward_models.registry import RewardSource, build_reward_sources, parse_reward_kwargs, parse_specs
from stages.ppo.build import build_policy_and_value, save_policy_and_value
from stages.ppo.checkpoints import check_resumable
from stages.ppo.config import PPOConfig, PPOModelArguments
from stages.ppo.evaluate import evaluate_policies
from stages.ppo.layout import decide_layout
from stages.ppo.trainer import PPOTrainer

PLOTS = {
    "score": ["objective/scores", "objective/gold_scores", "objective/rlhf_reward"],
    "kl": ["objective/kl"],
    "beta": ["objective/kl_coef"],
    "losses": ["loss/policy_avg", "loss/value_avg"],
    "critic": ["val/explained_variance"],
    "response_length": ["val/response_length"],
    "clipfrac": ["policy/clipfrac_avg", "val/clipfrac_avg"],
    "approxkl": ["policy/approxkl_avg"],
    "time": ["time/generation", "time/forward", "time/reward", "time/update"],
}


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU memory allocated by torch on CUDA, else peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return peak_rss / 2**20 if sys.platform == "darwin" else peak_rss / 1024


def run_reward_model(stage_dir: Path) -> Path:
    """The RM stage's reward model in ``stage_dir``: its LoRA adapter when it trained one, else its full model."""
    adapter = stage_dir / "adapter"
    return adapter if is_lora_adapter(adapter) else stage_dir / "model"


def check_value_tokenizer(policy_tokenizer: PreTrainedTokenizerBase, value_source: str) -> None:
    """A separate value model reads the policy's token ids: its tokenizer must give every token the same id."""
    value_vocab = AutoTokenizer.from_pretrained(value_source).get_vocab()
    differ = [t for t, i in policy_tokenizer.get_vocab().items() if value_vocab.get(t) != i]
    if differ:
        raise PipelineError(
            f"value_model 'separate' reads the policy's token ids, but {len(differ)} tokens of the SFT model's "
            f"tokenizer are missing from the value model's ({value_source}) or have other ids, e.g. {differ[:3]}: "
            "set value_model_path to a model with the SFT model's tokenizer, or use value_model 'adapter'"
        )


def reward_model_loader(
    rm_source: str | None, on_policy_base: Callable | None, dtype: str, batch_size: int
) -> Callable[[str], RewardSource]:
    """Learned reward sources: ``rm`` is the run's reward model (``on_policy_base``, its scorer on the policy's base,
    when the layout put it there), anything else a folder or hub id."""

    def load(spec: str) -> RewardSource:
        if spec == "rm" and rm_source is None:
            raise PipelineError("reward 'rm' needs a reward model: set reward_model_path or run `make rm`")
        if spec == "rm" and on_policy_base is not None:
            return PolicyBaseReward(on_policy_base)
        return load_learned_reward(rm_source if spec == "rm" else spec, dtype, batch_size, PartialState().device)

    return load


def main(argv: list[str] | None = None) -> None:
    """Train the policy with PPO and write ``runs/<run>/ppo/``."""
    run_args, data_args, args, model_args = parse_config(
        (RunArguments, DataArguments, PPOConfig, PPOModelArguments), argv
    )
    started = time.time()
    stage = StageDir(run_args.runs_dir, run_args.run, "ppo")
    check_resumable(stage, args.resume_from_checkpoint)
    if args.sft_model_path:
        sft_source = resolve_model_source(args.sft_model_path, "SFT model")
    else:
        sft_source = str(require_complete(run_args.runs_dir, run_args.run, "sft") / "model")
    specs = parse_specs(args.reward) + parse_specs(args.gold_reward)
    reward_kwargs = parse_reward_kwargs(args.reward_kwargs, specs)
    rm_source = None
    if "rm" in specs or args.value_model == "separate" and not args.value_model_path:
        if args.reward_model_path:
            rm_source = resolve_model_source(args.reward_model_path, "reward model")
        else:
            rm_source = str(run_reward_model(require_complete(run_args.runs_dir, run_args.run, "rm")))
    layout = decide_layout(args, model_args, rm_source if "rm" in specs else None, sft_source, args.share_reward_base)
    value_source = resolve_model_source(args.value_model_path, "value model") if args.value_model_path else rm_source
    tokenizer = load_tokenizer(sft_source, model_args.tokenizer_pad_token)
    if layout.value_model == "separate":
        check_value_tokenizer(tokenizer, value_source)
    train_rows, eval_rows = load_prompt_data(data_args, tokenizer)

    work = begin_stage(stage, resume=bool(args.resume_from_checkpoint))
    args.output_dir, args.logging_dir = str(work), str(work / "logs")
    if PartialState().is_main_process and not args.resume_from_checkpoint:
        stage.write_manifest(
            {"run": run_args, "data": data_args, "ppo": args, "model": model_args},
            {"sft_model": sft_source, "reward_model": rm_source, "dataset": data_args.dataset_name},
            started,
        )
    set_seed(args.seed)  # LoRA and value-head initialization
    model = build_policy_and_value(sft_source, layout, model_args, args, tokenizer.pad_token_id, value_source)
    on_base = model.reward_scores if model.scores_rewards else None
    load_rm = reward_model_loader(rm_source, on_base, model_args.dtype, args.local_rollout_forward_batch_size)
    trainer = PPOTrainer(
        args=args,
        model=model,
        tokenizer=tokenizer,
        prompts=train_rows,
        rewards=build_reward_sources(args.reward, args.reward_weights, load_rm, reward_kwargs),
        gold=build_reward_sources(args.gold_reward, None, load_rm, reward_kwargs) if args.gold_reward else None,
        work_dir=work,
        offset_prompts=(
            train_rows.select(range(min(args.normalize_reward_samples, len(train_rows))))
            if args.normalize_reward
            else None
        ),
        callbacks=[JsonlMetricsCallback(work)],
    )
    last = trainer.train()
    evaluation = evaluate_policies(trainer, eval_rows.select(range(min(args.eval_prompts, len(eval_rows)))))

    summary: dict = {}
    if trainer.accelerator.is_main_process:
        folders = save_policy_and_value(trainer.unwrapped(), tokenizer, work, sft_source)
        plot_curves(read_metrics(work / METRICS), work / "plots", PLOTS)
        summary = {
            "score": evaluation["policy"]["score"],
            "kl": evaluation["policy"]["kl"],
            "gold_score": evaluation["policy"].get("gold_score"),
            "reference_score": evaluation["reference"]["score"],
            "reference_gold_score": evaluation["reference"].get("gold_score"),
            "score_gain": evaluation["score_gain"],
            "gold_gain": evaluation.get("gold_gain"),
            "evaluation": evaluation,
            "last_update": last,
            "updates": trainer.progress.update,
            "episodes": last.get("episode"),
            "episodes_per_second": last.get("eps"),
            "peak_memory_mb": peak_memory_mb(),
            **layout.describe(),
            **({"reward_not_on_policy_base": layout.reward_not_on_base} if layout.reward_not_on_base else {}),
            **folders,
        }
    end_stage(stage, summary, started)
    if trainer.accelerator.is_main_process:
        gold = (
            f", gold {summary['reference_gold_score']:.3f} -> {summary['gold_score']:.3f}" if args.gold_reward else ""
        )
        print(
            f"ppo: held-out score {summary['reference_score']:.3f} -> {summary['score']:.3f}{gold} "
            f"at KL {summary['kl']:.2f}; wrote {stage.final}"
        )
        refresh_report(run_args.runs_dir, run_args.run)


if __name__ == "__main__":
    run_main(main)
