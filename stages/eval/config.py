"""Configuration of the evaluation stage: which policies, against which reference, under which scorers, how they
decode. Every field left unset is taken from the run's PPO stage (its manifest), so that the evaluation samples and
scores as PPO did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pipeline.config import DataArguments
from pipeline.errors import PipelineError
from pipeline.runs import MANIFEST, read_json

DECODINGS = ("sampled", "greedy")
# Fields taken from the PPO stage's config when unset here, with the value used when there is no PPO stage either.
PPO_DEFAULTS = {
    "reward": "rm",
    "reward_weights": None,
    "reward_kwargs": None,
    "gold_reward": None,
    "reward_model_path": None,
    "temperature": 0.7,
    "response_length": 53,
    "max_prompt_length": 256,
    "stop_token": None,
    "stop_token_id": None,
}
DATA_FIELDS = ("dataset_name", "dataset_config", "eval_dataset_name", "dataset_format", "column_mapping")


@dataclass
class EvalArguments:
    """What `make eval` compares and how."""

    policies: str = field(
        default="sft,ppo",
        metadata={
            "help": "Comma-separated policies to compare with the reference: a stage of this run ('sft', 'ppo'), "
            "'<run>:<stage>' for another run's, a model folder, a LoRA adapter folder or a hub id."
        },
    )
    reference: str = field(
        default="sft",
        metadata={"help": "The policy every other one is compared with (win rates, KL), named as in `policies`."},
    )
    reward: str | None = field(
        default=None,
        metadata={
            "help": "The proxy scorer(s), comma-separated reward specs as PPO takes them ('rm', 'vader', a reward "
            "model folder or hub id, 'module:function'). Default: the PPO stage's reward, else 'rm'."
        },
    )
    reward_weights: str | None = field(
        default=None, metadata={"help": "Weights of the proxy scorers (default: the PPO stage's, else all 1)."}
    )
    reward_kwargs: str | None = field(
        default=None, metadata={"help": "JSON keyword arguments per 'module:name' scorer (default: the PPO stage's)."}
    )
    gold_reward: str | None = field(
        default=None,
        metadata={
            "help": "Gold scorer(s), comma-separated, never optimized (the demo: 'vader'). Default: the PPO "
            "stage's gold_reward; 'none' for none."
        },
    )
    reward_model_path: str | None = field(
        default=None,
        metadata={
            "help": "The reward model 'rm' stands for. Default: the one the PPO stage used, else this run's RM stage."
        },
    )
    num_prompts: int = field(default=200, metadata={"help": "Held-out prompts (the first ones of the eval split)."})
    decodings: str = field(
        default="sampled,greedy",
        metadata={"help": "'sampled' (at the temperature, as PPO samples), 'greedy', or both, comma-separated."},
    )
    temperature: float | None = field(default=None, metadata={"help": "Sampling temperature (default: PPO's)."})
    response_length: int | None = field(
        default=None, metadata={"help": "Maximum generated tokens per response (default: PPO's)."}
    )
    max_prompt_length: int | None = field(
        default=None, metadata={"help": "Prompts are cut from the left to this many tokens (default: PPO's)."}
    )
    stop_token: str | None = field(
        default=None,
        metadata={
            "help": "Extra stop text; give PPO's here (its manifest masks fields named *_token, as transformers does)."
        },
    )
    stop_token_id: int | None = field(default=None, metadata={"help": "Extra stop token id (default: PPO's)."})
    snapshots: bool = field(
        default=True,
        metadata={
            "help": "Score the PPO stage's policy snapshots (ppo --snapshot_every) with the proxy and gold scorers "
            "against sqrt(KL) to the reference: the over-optimization curve."
        },
    )
    snapshot_prompts: int | None = field(
        default=None, metadata={"help": "Held-out prompts per snapshot (default: num_prompts)."}
    )
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the bootstrap intervals."})
    bootstrap_resamples: int = field(default=2000, metadata={"help": "Bootstrap resamples per interval."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling (the same for every policy) and bootstrap."})
    batch_size: int = field(default=64, metadata={"help": "Rows per generation chunk and per forward pass."})
    dtype: str = field(default="float32", metadata={"help": "dtype the policies are loaded in."})

    def __post_init__(self) -> None:
        wrong = [name for name in self.decoding_list if name not in DECODINGS]
        if wrong or not self.decoding_list:
            raise PipelineError(f"decodings must be some of {DECODINGS}, comma-separated; got {self.decodings!r}")
        checks = {
            "num_prompts": (self.num_prompts > 0, "positive"),
            "batch_size": (self.batch_size > 0, "positive"),
            "bootstrap_resamples": (self.bootstrap_resamples > 0, "positive"),
            "confidence": (0 < self.confidence < 1, "between 0 and 1"),
            "snapshot_prompts": (self.snapshot_prompts is None or self.snapshot_prompts > 0, "positive"),
        }
        for name, (ok, expected) in checks.items():
            if not ok:
                raise PipelineError(f"{name} must be {expected}, got {getattr(self, name)!r}")
        if not self.policy_list:
            raise PipelineError("policies is empty: name at least one policy to compare with the reference")

    @property
    def policy_list(self) -> list[str]:
        """The compared policies, the reference left out, in the given order."""
        specs = [spec.strip() for spec in self.policies.split(",") if spec.strip()]
        return [spec for spec in dict.fromkeys(specs) if spec != self.reference]

    @property
    def decoding_list(self) -> list[str]:
        return [name.strip() for name in self.decodings.split(",") if name.strip()]


def ppo_manifest(ppo_dir: Path) -> dict | None:
    """The PPO stage's manifest, or None when the stage is absent or incomplete."""
    path = ppo_dir / MANIFEST
    return read_json(path) if path.is_file() and (ppo_dir / "summary.json").is_file() else None


def fill_from_ppo(args: EvalArguments, data_args: DataArguments, manifest: dict | None) -> None:
    """Fill the unset fields of ``args`` and ``data_args`` from the PPO stage's manifest (or the built-in
    defaults), so that the evaluation samples, scores and reads prompts as PPO did."""
    ppo = (manifest or {}).get("config", {}).get("ppo", {})
    for name, default in PPO_DEFAULTS.items():
        value = ppo.get(name, default)
        if value == f"<{name.upper()}>":  # transformers' to_dict masks every field named *_token in the manifest
            value = default
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.gold_reward in ("none", ""):
        args.gold_reward = None
    data = (manifest or {}).get("config", {}).get("data", {})
    if data_args.dataset_name is None and data_args.eval_dataset_name is None:
        for name in DATA_FIELDS:
            if data.get(name) is not None:
                setattr(data_args, name, data[name])
    if data_args.dataset_name is None and data_args.eval_dataset_name is None:
        raise PipelineError(
            "no prompts to evaluate on: set --eval_dataset_name (a file of held-out prompts), or run the PPO stage, "
            "whose data settings are used by default"
        )
    if data_args.dataset_name is None:  # only held-out prompts given: load them as both splits
        data_args.dataset_name = data_args.eval_dataset_name
