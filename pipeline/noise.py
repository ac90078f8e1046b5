"""Library messages that are not the user's to act on, silenced here and nowhere else.

Each filter matches one message (and the module that emits it), so everything else a library says still shows.
:func:`silence_library_noise` runs before any stage imports TRL (``stages/__init__.py``); the two context managers
cover messages that are noise only where this project knows why (loading a reward model's base, merging).
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (category, message, module): what each warning says and why it is not the user's to act on.
_WARNINGS = (
    # TRL's configs default the deprecated name to True, so every run warns; our configs use the new name, and the
    # old one works in every transformers version this project allows (<6).
    (FutureWarning, r"`gradient_checkpointing` is deprecated", r"transformers\.training_args"),
    # PEFT (0.21) reads the deprecated property of transformers 5 models while wrapping them.
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
    # On a machine without an accelerator there is nothing to pin: the setting has no effect.
    (UserWarning, r"'pin_memory' argument is set as true but no accelerator is found", r"torch\.utils\.data"),
    # PEFT saves the embeddings with an adapter that trains them: what the adapter needs, said at every save.
    (UserWarning, r"Setting `save_embedding_layers` to `True`", r"peft\.utils\.save_and_load"),
)
# bitsandbytes looks for an optional hub kernel at import on CPUs with AVX512-BF16; it would serve 4-bit inference
# on CPU, which this project switches off for training anyway (pipeline/models.py, _keep_4bit_trainable).
_BITSANDBYTES_LOGGER = "bitsandbytes.backends.cpu.ops"
_BITSANDBYTES_KERNEL = "Failed to load CPU gemm_4bit_forward from kernels-community"
_TRANSFORMERS_LOAD_LOGGER = "transformers.modeling_utils"
# A new score head's load report: the status of each row -> the keys it may name.
_NEW_HEAD_ROWS = {"MISSING": "score.", "UNEXPECTED": "lm_head."}
# PEFT's warnings when an adapter that trains token embeddings tied to the LM head is put on a model, and merged.
_TIED_EMBEDDINGS = (
    r"Model has `tie_word_embeddings=True` and a tied layer is part of the adapter",
    r"Model with `tie_word_embeddings=True` and the tied_target_modules=",
)


class _DropMessage(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_library_noise() -> None:
    """Install the message filters above (idempotent; before bitsandbytes is imported, for its import message)."""
    for category, message, module in _WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    logger = logging.getLogger(_BITSANDBYTES_LOGGER)
    if not any(isinstance(known, _DropMessage) for known in logger.filters):
        logger.addFilter(_DropMessage(_BITSANDBYTES_KERNEL))


def _report_rows(message: str) -> list[tuple[str, str]]:
    """(key, status) of each row of a transformers load report; [] for any other message."""
    if "LOAD REPORT" not in message:
        return []
    rows = []
    for line in message.splitlines():
        cells = [re.sub(r"\x1b\[[0-9;]*m", "", cell).strip() for cell in line.split(" | ")]
        if len(cells) >= 2 and cells[:2] != ["Key", "Status"]:
            rows.append((cells[0], cells[1]))
    return rows


class _NewScoreHeadReport(logging.Filter):
    """Drops a load report that lists only a new score head (missing) and an unused LM head (unexpected)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rows = _report_rows(record.getMessage())
        return not rows or not all(
            status in _NEW_HEAD_ROWS and key.startswith(_NEW_HEAD_ROWS[status]) for key, status in rows
        )


@contextmanager
def new_score_head() -> Iterator[None]:
    """While loading a causal LM's weights into a sequence classifier whose score head is new (the RM stage trains
    it, or an adapter loaded next brings it): no load report for that head. Any other mismatch is still reported."""
    logger = logging.getLogger(_TRANSFORMERS_LOAD_LOGGER)
    report_filter = _NewScoreHeadReport()
    logger.addFilter(report_filter)
    try:
        yield
    finally:
        logger.removeFilter(report_filter)


@contextmanager
def lm_head_unaffected() -> Iterator[None]:
    """While putting on or merging a LoRA adapter that trains token embeddings tied to an LM head, where that head
    does not matter: no PEFT warning about the tie. For a reward model, which has no LM head (and, in PPO, for the
    reward adapter on the policy's base, which never reads it, and for merging only the policy's adapter)."""
    with warnings.catch_warnings():
        for message in _TIED_EMBEDDINGS:
            warnings.filterwarnings("ignore", message=message, category=UserWarning)
        yield
