"""Checkpoints of a PPO run: written atomically, pruned, and resumed strictly.

A checkpoint is accelerate's ``save_state`` (the trained parameters, optimizer, scheduler, RNG states and the
registered KL controller and progress) in ``checkpoints/checkpoint-<update>``: it is written to a ``.partial``
folder and renamed into place, so a run killed while saving never leaves a checkpoint that looks complete (that is
why the folders are named here rather than by accelerate's automatic naming, which writes in place). Beside the
state, ``run_signature.json`` records the layout and the batch arithmetic; resuming with other settings, or into a
model whose trained parameters differ from the checkpoint's, is refused instead of silently starting fresh weights.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from safetensors import safe_open
from torch import nn

from pipeline.errors import PipelineError
from pipeline.metrics import read_metrics
from pipeline.runs import METRICS, StageDir, read_json, write_json_atomic

CHECKPOINT_PREFIX = "checkpoint-"
SIGNATURE = "run_signature.json"
MODEL_FILE = "model.safetensors"
SAMPLES = "samples.jsonl"
# The per-update logs of a run, with the key that holds each record's update.
LOG_FILES = {METRICS: "step", SAMPLES: "update"}


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and p.name.startswith(CHECKPOINT_PREFIX) and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def check_resumable(stage: StageDir, resume_from_checkpoint: str | None) -> None:
    """Before anything is loaded: ``resume_from_checkpoint latest`` needs a checkpoint of an unfinished run."""
    if str(resume_from_checkpoint).lower() not in ("true", "latest"):
        return
    if latest_checkpoint(stage.work / "checkpoints") is not None:
        return
    if stage.is_complete():
        raise PipelineError(
            f"stage '{stage.stage}' of run '{stage.run}' is already complete ({stage.final}): there is nothing to "
            "resume. Run it again without --resume_from_checkpoint to start afresh (the completed stage is replaced "
            "when the new run finishes)"
        )
    raise PipelineError(f"resume_from_checkpoint: no checkpoint in {stage.work / 'checkpoints'}")


class Checkpoints:
    """Save and resume the state that ``accelerator`` holds (see the module docstring)."""

    def __init__(
        self,
        folder: Path,
        accelerator: Accelerator,
        keep: int | None,
        signature: dict,
        model: Callable[[], nn.Module],
    ) -> None:
        """``model()`` gives the (unwrapped) trained module, with ``trainable_names()``."""
        self.folder, self.accelerator, self.keep = Path(folder), accelerator, keep
        self.signature, self.model = signature, model
        accelerator.register_save_state_pre_hook(self._keep_trainable_only)

    def _trained_shapes(self) -> dict[str, list[int]]:
        model = self.model()
        trainable = model.trainable_names()
        return {name: list(p.shape) for name, p in model.named_parameters() if name in trainable}

    def _keep_trainable_only(self, models, weights, output_dir) -> None:
        # Checkpoints hold what PPO trains (adapters, value head or value model), not the frozen base weights.
        trainable = self.model().trainable_names()
        for state in weights:
            for name in [n for n in state if n not in trainable]:
                del state[name]

    def path(self, update: int) -> Path:
        return self.folder / f"{CHECKPOINT_PREFIX}{update}"

    def save(self, update: int) -> Path:
        """Write the checkpoint of ``update`` atomically and prune the oldest beyond ``keep``."""
        target = self.path(update)
        partial = target.with_name(target.name + ".partial")
        self.accelerator.save_state(str(partial))
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            write_json_atomic(partial / SIGNATURE, self.signature)
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
            if self.keep:
                for old in list_checkpoints(self.folder)[: -self.keep]:
                    shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return target

    def resolve(self, wanted: str | None) -> Path | None:
        """The checkpoint ``resume_from_checkpoint`` names ('latest' or 'true': the newest one), or None."""
        if not wanted:
            return None
        if str(wanted).lower() in ("true", "latest"):
            path = latest_checkpoint(self.folder)
            if path is None:
                raise PipelineError(f"resume_from_checkpoint: no checkpoint in {self.folder}")
            return path
        if not Path(wanted).is_dir():
            raise PipelineError(f"resume_from_checkpoint: {wanted} is not a checkpoint folder")
        return Path(wanted)

    def load(self, path: Path) -> None:
        """Restore the state saved in ``path`` after checking it was written by a run like this one."""
        self._check_signature(path)
        self._check_parameters(path)
        # strict=False only because a checkpoint leaves out the frozen base weights; the trained ones were checked.
        self.accelerator.load_state(str(path), strict=False)

    def _check_signature(self, path: Path) -> None:
        saved_file = path / SIGNATURE
        if not saved_file.is_file():
            raise PipelineError(f"{path} has no {SIGNATURE}: it is not a complete checkpoint of this pipeline")
        saved = read_json(saved_file)
        differ = [key for key in sorted(set(saved) | set(self.signature)) if saved.get(key) != self.signature.get(key)]
        if differ:
            details = "; ".join(f"{key}: {saved.get(key)!r} there, {self.signature.get(key)!r} now" for key in differ)
            raise PipelineError(
                f"checkpoint {path} was written with other settings ({details}): resume with the settings it was "
                "written with, or start afresh without resume_from_checkpoint"
            )

    def _check_parameters(self, path: Path) -> None:
        model_file = path / MODEL_FILE
        if not model_file.is_file():  # DeepSpeed and FSDP save their own formats; the signature check covers them
            return
        with safe_open(str(model_file), framework="pt") as saved:
            shapes = {name: list(saved.get_slice(name).get_shape()) for name in saved.keys()}  # noqa: SIM118
        expected = self._trained_shapes()
        if shapes != expected:
            missing, extra = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
            resized = sorted(n for n in set(shapes) & set(expected) if shapes[n] != expected[n])
            raise PipelineError(
                f"checkpoint {path} does not hold this run's trained parameters (missing {missing[:3]}, "
                f"unexpected {extra[:3]}, other shapes {resized[:3]}): resume with the model and LoRA settings it "
                "was written with"
            )


def forget_logs_after(work_dir: Path, update: int) -> None:
    """Drop records logged after ``update``: a killed run may have logged updates past its last checkpoint, and the
    resumed run logs them again."""
    for name, key in LOG_FILES.items():
        path = work_dir / name
        if path.exists():
            kept = [record for record in read_metrics(path) if record[key] <= update]
            partial = path.with_name(path.name + ".partial")
            partial.write_text("".join(json.dumps(record) + "\n" for record in kept))
            os.replace(partial, path)
