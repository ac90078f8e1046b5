"""A stage prints its progress and results, not library messages that are not the user's to act on."""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from safetensors.torch import load_file, save_file

from pipeline.config import ModelArguments
from pipeline.models import load_sequence_scorer
from pipeline.noise import silence_library_noise
from tests.conftest import REPO, subprocess_env
from tests.stage_runs import rm_args, sft_args

# What the stages printed before (pipeline/noise.py says why each is noise).
NOISE = (
    "Failed to load CPU gemm_4bit_forward from kernels-community",
    "`gradient_checkpointing` is deprecated",
    "`is_gradient_checkpointing` is deprecated",
    "'pin_memory' argument is set as true but no accelerator is found",
    "Setting `save_embedding_layers` to `True`",
    "Model with `tie_word_embeddings=True`",
    "LOAD REPORT",
)
# A progress bar's line: "<desc>: 100%|#####| 64/64 [00:00<00:00, 123.4 examples/s]" and the redraws between.
PROGRESS = re.compile(r"^.*\d+%\|.*\||^.*\d+ examples \[|^\s*(\x1b\[A)?\s*$")


def stage_stderr(stage: str, args: list[str]) -> str:
    result = subprocess.run(
        [sys.executable, "-m", f"stages.{stage}", *args],
        cwd=REPO,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stderr


@pytest.mark.parametrize("stage", ["sft", "rm"])
def test_a_stage_prints_progress_bars_only(stage: str, tiny_base: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    small = {"train_rows": 32, "eval_rows": 16}
    if stage == "sft":
        args = sft_args(runs, "quiet", tiny_base, **small)
    else:  # LoRA on the token embeddings of a causal LM with tied embeddings, as the demo's RM stage trains it
        args = rm_args(runs, "quiet", "--model_name_or_path", str(tiny_base), **small)
    stderr = stage_stderr(stage, args)

    for message in NOISE:
        assert message not in stderr
    lines = stderr.replace("\r", "\n").splitlines()
    assert [line for line in lines if not PROGRESS.match(line)] == []


# ----- only those messages ---------------------------------------------------------------------------------------


def test_the_warning_filters_match_their_message_only() -> None:
    other = "`fp16_backend` is deprecated and will be removed in v6. Use `half_precision_backend` instead."
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        silence_library_noise()
        for message in ("`gradient_checkpointing` is deprecated and will be removed in v6.", other):
            warnings.warn_explicit(message, FutureWarning, "training_args.py", 1, module="transformers.training_args")
    assert [str(warning.message) for warning in shown] == [other]


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The messages logged to logger ``name`` (after its filters) within the block."""
    handler = Collect()
    logging.getLogger(name).addHandler(handler)
    try:
        yield handler.messages
    finally:
        logging.getLogger(name).removeHandler(handler)


def test_the_bitsandbytes_filter_matches_its_message_only() -> None:
    silence_library_noise()
    logger = logging.getLogger("bitsandbytes.backends.cpu.ops")
    with logged(logger.name) as messages:
        logger.warning("Failed to load CPU gemm_4bit_forward from kernels-community: No module named 'kernels'.")
        logger.warning("Something else went wrong")
    assert messages == ["Something else went wrong"]


@pytest.fixture(scope="module")
def base_without_norm(tiny_base: Path, tmp_path_factory) -> Path:
    """The tiny base with a weight missing from its checkpoint (a broken or mismatched model)."""
    folder = tmp_path_factory.mktemp("broken") / "base"
    shutil.copytree(tiny_base, folder)
    weights = load_file(folder / "model.safetensors")
    del weights["model.norm.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


def load_reports(source: Path, new_head: bool) -> list[str]:
    """The load reports transformers logs while ``source`` is loaded as a reward model."""
    with logged("transformers.modeling_utils") as messages:
        load_sequence_scorer(str(source), ModelArguments(dtype="float32"), pad_token_id=0, new_head=new_head)
    return [message for message in messages if "LOAD REPORT" in message]


def test_a_new_score_head_is_not_reported_where_the_stage_trains_it(tiny_base: Path) -> None:
    assert load_reports(tiny_base, new_head=True) == []


def test_a_missing_score_head_is_reported_where_a_trained_one_is_expected(tiny_base: Path) -> None:
    [report] = load_reports(tiny_base, new_head=False)  # e.g. a causal LM given to PPO as its reward model
    assert "score.weight" in report


def test_other_missing_weights_are_reported_with_a_new_score_head(base_without_norm: Path) -> None:
    [report] = load_reports(base_without_norm, new_head=True)
    assert "model.norm.weight" in report
