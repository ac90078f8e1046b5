"""The policies an evaluation compares: where each comes from, how it is loaded, how it decodes (with the PPO
engine's sampling: the same distribution PPO samples), and the log-probabilities of its responses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import PeftModel
from torch import nn
from transformers import PreTrainedTokenizerBase

from pipeline.config import ModelArguments
from pipeline.errors import PipelineError
from pipeline.models import adapter_base, is_lora_adapter, load_causal_lm, load_tokenizer, resolve_model_source
from pipeline.runs import StageDir, check_run_name, require_complete
from reward_models.base import Episodes
from stages.ppo.modeling import last_logits, position_ids_from
from stages.ppo.rollout import to_episodes
from stages.ppo.sampling import (
    TokenRules,
    generate,
    sampling_config,
    stop_token_ids,
    token_logprobs,
    tokenize_prompts,
)

# Run stages that hold a policy (``model/``, or ``adapter/`` on the base it names).
POLICY_STAGES = ("sft", "ppo")


@dataclass
class Policy:
    """A loaded policy: its name in the report, where it came from, the model (eval mode, frozen) and tokenizer."""

    name: str
    source: str
    model: nn.Module
    tokenizer: PreTrainedTokenizerBase


@dataclass
class Decoding:
    """How the policies generate: PPO's sampling settings."""

    temperature: float
    response_length: int
    max_prompt_length: int | None
    stop_token: str | None
    stop_token_id: int | None
    batch_size: int


def stage_policy_folder(stage_dir: Path) -> Path:
    """The policy a completed stage holds: its plain ``model/`` folder, else its LoRA ``adapter/``."""
    for name in ("model", "adapter"):
        if (stage_dir / name).is_dir():
            return stage_dir / name
    raise PipelineError(f"{stage_dir} holds no policy (neither model/ nor adapter/): name a stage that trains one")


def resolve_policy(spec: str, runs_dir: Path, run: str) -> str:
    """Where the policy ``spec`` lives: a stage of this run (``sft``, ``ppo``), ``<run>:<stage>``, a model or adapter
    folder, or a hub id; errors name the make target or the path to fix."""
    if ":" in spec and not os.path.exists(spec) and "/" not in spec:
        other_run, stage = spec.split(":", 1)
        check_run_name(other_run)
        return str(stage_policy_folder(require_complete(runs_dir, other_run, stage)))
    if spec in POLICY_STAGES or ("/" not in spec and (StageDir(runs_dir, run, spec).final).is_dir()):
        return str(stage_policy_folder(require_complete(runs_dir, run, spec)))
    return resolve_model_source(spec, "policy")


def load_policy(name: str, source: str, dtype: str, device: torch.device) -> Policy:
    """A causal LM from a model folder or hub id, or a LoRA adapter on the base it names (with the adapter's
    tokenizer where it saved one), dropout off, frozen, in eval mode, on ``device``."""
    tokenizer_source = source
    if is_lora_adapter(source):
        base = resolve_model_source(adapter_base(source), f"base model of the adapter in {source}")
        model = PeftModel.from_pretrained(load_causal_lm(base, ModelArguments(dtype=dtype)), source)
        if not (Path(source) / "tokenizer_config.json").is_file():
            tokenizer_source = base
    else:
        model = load_causal_lm(source, ModelArguments(dtype=dtype))
    model = model.to(device).eval().requires_grad_(False)
    return Policy(name, source, model, load_tokenizer(tokenizer_source))


def same_vocabulary(one: PreTrainedTokenizerBase, other: PreTrainedTokenizerBase) -> bool:
    """Whether two tokenizers give every token the same id (so one model can score the other's token ids)."""
    return one.get_vocab() == other.get_vocab()


@torch.no_grad()
def decode(
    policy: Policy, rows: dict[str, list], decoding: Decoding, greedy: bool, seed: int, device: torch.device
) -> Episodes:
    """Each row's prompt answered by ``policy``: sampled at the temperature with no top-k / top-p (seeded, so every
    policy draws the same random numbers), or greedy; truncated after the first stop token."""
    tokenizer, prompts = policy.tokenizer, list(rows["prompt"])
    stop_ids = stop_token_ids(tokenizer, decoding.stop_token, decoding.stop_token_id)
    prompt_ids, prompt_mask = tokenize_prompts(tokenizer, prompts, decoding.max_prompt_length, device)
    config = sampling_config(
        decoding.response_length, decoding.temperature, stop_ids, tokenizer.pad_token_id, greedy=greedy
    )
    torch.manual_seed(seed)
    raw = generate(policy.model, prompt_ids, prompt_mask, config, TokenRules(), decoding.batch_size)
    return to_episodes(tokenizer, prompts, dict(rows), prompt_ids, prompt_mask, raw, stop_ids)


@torch.no_grad()
def response_logprobs(model: nn.Module, episodes: Episodes, temperature: float, batch_size: int) -> torch.Tensor:
    """``log p(response | prompt)`` of each episode under ``model`` at the sampling temperature (the sum of its
    tokens' log-probabilities up to its end), float32 on the CPU."""
    totals = []
    for start in range(0, len(episodes), batch_size):
        rows = slice(start, start + batch_size)
        mask = episodes.attention_mask[rows]
        responses = episodes.responses[rows]
        logits = last_logits(
            model, episodes.input_ids[rows], mask, position_ids_from(mask), keep=responses.shape[1] + 1
        )[:, :-1]
        logprobs = token_logprobs(logits, responses, temperature)
        totals.append((logprobs * episodes.response_mask[rows]).sum(1).float().cpu())
    return torch.cat(totals)
