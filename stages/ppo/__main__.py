"""PPO stage: optimize the SFT policy against a reward source with a KL penalty to the SFT reference.

Run: ``accelerate launch -m stages.ppo --config configs/<preset>/ppo.yaml [--field value ...]``.
"""

from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from transformers import AutoTokenizer, PreTrainedTokenizerBase, set_seed

from pipeline.config import DataArguments, RunArguments, parse_config
from pipeline.datasets import load_prompt_data
from pipeline.errors import PipelineError, run_main
from pipeline.metrics import JsonlMetricsCallback, plot_curves, read_metrics
from pipeline.models import adapter_base, is_lora_adapter, load_tokenizer, resolve_model_source
from pipeline.runs import METRICS, StageDir, begin_stage, end_stage, require_complete
from reward_models.registry import build_reward
from stages.ppo.build import build_policy_and_value, reward_model_loader, save_policy_and_value
from stages.ppo.config import PPOConfig, PPOModelArguments
from stages.ppo.evaluate import evaluate_policies
from stages.ppo.reward_adapter import run_reward_model, trained_on
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
}


def _input(path: str | None, runs_dir: str, run: str, stage: str, what: str) -> str:
    if path:
        return resolve_model_source(path, what)
    return str(require_complete(runs_dir, run, stage) / "model")


def peak_memory_mb() -> float:
    """Peak memory of this process: GPU memory allocated by torch on CUDA, else peak resident set size."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return peak_rss / 2**20 if sys.platform == "darwin" else peak_rss / 1024


def check_value_tokenizer(policy_tokenizer: PreTrainedTokenizerBase, value_source: str) -> PreTrainedTokenizerBase:
    """The value model's tokenizer, checked to give every token of the policy's the same id (it reads the policy's
    token ids)."""
    value_tokenizer = AutoTokenizer.from_pretrained(value_source)
    value_vocab = value_tokenizer.get_vocab()
    differ = [t for t, i in policy_tokenizer.get_vocab().items() if value_vocab.get(t) != i]
    if differ:
        raise PipelineError(
            f"value_model 'separate' reads the policy's token ids, but {len(differ)} tokens of the SFT model's "
            f"tokenizer are missing from the value model's ({value_source}) or have other ids, e.g. {differ[:3]}: "
            "set value_model_path to a model with the SFT model's tokenizer, or use value_model 'adapter'"
        )
    return value_tokenizer


def shares_reward_model(
    args: PPOConfig, model_args: PPOModelArguments, value_source: str | None, rm_source: str | None, same_pad: bool
) -> bool:
    """Whether the LoRA value model's base also scores the rewards, instead of a second copy of the reward model.

    Under DeepSpeed and FSDP the value model's parameters are sharded inside the engine, so the reward model keeps
    its own copy there; a quantized value model would score rewards in 4/8 bits, so it does too. The value model
    is loaded with the policy's pad token, where the reward model reads its score, so the two must pad alike.
    """
    return (
        args.value_model == "separate"
        and model_args.use_peft
        and same_pad
        and value_source is not None
        and value_source == rm_source
        and not (model_args.load_in_4bit or model_args.load_in_8bit)
        and PartialState().distributed_type not in (DistributedType.DEEPSPEED, DistributedType.FSDP)
    )


def reward_adapter_on_policy_base(
    args: PPOConfig, model_args: PPOModelArguments, rm_source: str | None, sft_source: str
) -> Path | None:
    """The reward model's LoRA adapter when it goes on the policy's base (see ``share_reward_base``), else None;
    ``value_init`` 'reward' without one is refused, naming why."""
    if args.value_model != "adapter":
        return None
    reason = _why_not_on_policy_base(args, model_args, rm_source, sft_source)
    if reason is None:
        return Path(rm_source)
    if args.value_init == "reward":
        raise PipelineError(f"value_init 'reward' needs the reward adapter on the policy's base, but {reason}")
    return None


def _why_not_on_policy_base(
    args: PPOConfig, model_args: PPOModelArguments, rm_source: str | None, sft_source: str
) -> str | None:
    if not args.share_reward_base:
        return "share_reward_base is false"
    if rm_source is None:
        return "no reward model is used (neither reward nor gold_reward names 'rm')"
    if not is_lora_adapter(rm_source):
        return f"the reward model {rm_source} is a full model, not a LoRA adapter (train the RM stage with use_peft)"
    if model_args.load_in_4bit or model_args.load_in_8bit:
        return "the policy's base is 4/8-bit"
    if not trained_on(Path(rm_source), sft_source):
        return f"the reward adapter was trained on {adapter_base(rm_source)}, not on the SFT model {sft_source}"
    return None


def main(argv: list[str] | None = None) -> None:
    """Train the policy with PPO and write ``runs/<run>/ppo/``."""
    run_args, data_args, args, model_args = parse_config(
        (RunArguments, DataArguments, PPOConfig, PPOModelArguments), argv
    )
    started = time.time()
    stage = StageDir(run_args.runs_dir, run_args.run, "ppo")
    if args.value_model == "adapter" and not model_args.use_peft:
        raise PipelineError(
            "value_model 'adapter' needs use_peft true; use --value_model separate for full fine-tuning"
        )
    sft_source = _input(args.sft_model_path, run_args.runs_dir, run_args.run, "sft", "SFT model")
    specs = f"{args.reward},{args.gold_reward or ''}".split(",")
    needs_rm = "rm" in specs or args.value_model == "separate" and not args.value_model_path
    rm_source = None
    if needs_rm and args.reward_model_path:
        rm_source = resolve_model_source(args.reward_model_path, "reward model")
    elif needs_rm:
        rm_source = str(run_reward_model(require_complete(run_args.runs_dir, run_args.run, "rm")))
    reward_adapter = reward_adapter_on_policy_base(args, model_args, rm_source, sft_source)
    value_source = resolve_model_source(args.value_model_path, "value model") if args.value_model_path else rm_source
    tokenizer = load_tokenizer(sft_source, model_args.tokenizer_pad_token)
    same_pad = False
    if args.value_model == "separate":
        same_pad = check_value_tokenizer(tokenizer, value_source).pad_token_id == tokenizer.pad_token_id
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
    model = build_policy_and_value(sft_source, value_source, model_args, args, tokenizer.pad_token_id, reward_adapter)
    shares = reward_adapter is not None or shares_reward_model(args, model_args, value_source, rm_source, same_pad)
    shared = model if shares else None
    load_rm = reward_model_loader(rm_source, model_args.dtype, args.local_rollout_forward_batch_size, shared)
    trainer = PPOTrainer(
        args=args,
        model=model,
        tokenizer=tokenizer,
        prompts=train_rows,
        reward_fn=build_reward(args.reward, args.reward_weights, load_rm),
        gold_fn=build_reward(args.gold_reward, None, load_rm) if args.gold_reward else None,
        work_dir=work,
        callbacks=[JsonlMetricsCallback(work)],
    )
    last = trainer.train()
    evaluation = evaluate_policies(trainer, eval_rows.select(range(min(args.eval_prompts, len(eval_rows)))))

    summary: dict = {}
    if trainer.accelerator.is_main_process:
        model = trainer.accelerator.unwrap_model(trainer.model_wrapped)
        folders = save_policy_and_value(model, tokenizer, work, sft_source)
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
            "value_model": args.value_model,
            "reward_on_policy_base": reward_adapter is not None,
            "value_init": ("reward" if model.value_reads_reward else "zero") if model.one_base else None,
            "lora": bool(model_args.use_peft),
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


if __name__ == "__main__":
    run_main(main)
