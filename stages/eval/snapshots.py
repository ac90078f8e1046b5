"""The PPO stage's policy snapshots (``ppo --snapshot_every N``: the policy adapter every N updates), loaded one
after the other on one copy of their base model."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from peft import PeftModel

from pipeline.config import ModelArguments
from pipeline.models import adapter_base, is_lora_adapter, load_causal_lm, load_tokenizer, resolve_model_source
from stages.eval.policies import Policy
from stages.ppo.trainer import SNAPSHOT_PREFIX, SNAPSHOTS


def list_snapshots(ppo_dir: Path) -> list[tuple[int, Path]]:
    """(update, folder) of every complete snapshot in a PPO stage folder, in update order."""
    folder = Path(ppo_dir) / SNAPSHOTS
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        number = path.name.removeprefix(SNAPSHOT_PREFIX)
        if path.name.startswith(SNAPSHOT_PREFIX) and number.isdigit() and is_lora_adapter(path):
            found.append((int(number), path))
    return sorted(found)


def snapshot_policies(snapshots: list[tuple[int, Path]], dtype: str, device: torch.device) -> Iterator[Policy]:
    """Each snapshot as a policy, in turn: its adapter put on the base they share (loaded once), the previous
    snapshot's adapter removed; the tokenizer is the base's."""
    if not snapshots:
        return
    base = resolve_model_source(adapter_base(snapshots[0][1]), f"base model of the snapshot {snapshots[0][1]}")
    tokenizer = load_tokenizer(base)
    model: PeftModel | None = None
    previous = None
    for update, folder in snapshots:
        name = f"{SNAPSHOT_PREFIX}{update}"
        if model is None:
            base_model = load_causal_lm(base, ModelArguments(dtype=dtype)).to(device)
            model = PeftModel.from_pretrained(base_model, str(folder), adapter_name=name)
        else:
            model.load_adapter(str(folder), adapter_name=name)
            model.set_adapter(name)
            model.delete_adapter(previous)
        previous = name
        yield Policy(name, str(folder), model.to(device).eval().requires_grad_(False), tokenizer)
