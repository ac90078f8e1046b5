"""Shared fixtures: offline hub, one CPU thread per test process, tiny models built once per session."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "data" / "demo"
# Small enough for a CPU test to train in seconds, big enough to learn the demo domain a little.
TINY_SIZE = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2}

# Two cores: torch's default of one thread per core makes parallel processes spin against each other.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory) -> Path:
    """A tiny random Llama + the demo tokenizer, saved like a hub model (built once per session)."""
    from pipeline.tiny_base import build_tiny_base

    return build_tiny_base(DEMO_DATA, tmp_path_factory.mktemp("tiny") / "base", seed=0, **TINY_SIZE)


def subprocess_env() -> dict[str, str]:
    """Environment for stage subprocesses: offline, one thread, unbuffered, repo importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    return env


@pytest.fixture(scope="session")
def sft_model(tiny_base, tmp_path_factory) -> Path:
    """The tiny base after a short SFT, so a policy can be steered in a few PPO updates (built once)."""
    from tests.ppo_testing import tiny_sft_model

    return tiny_sft_model(tiny_base, tmp_path_factory.getbasetemp())
