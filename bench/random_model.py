"""Random-weight Llama policy and reward model of a chosen size, for speed and memory benchmarks.

``python -m bench.random_model --tokenizer build/tiny-base --out runs/bench/random-100m --params 100M`` writes a
``LlamaForCausalLM`` to OUT, a random reward model on it as the RM stage trains one with LoRA (a LoRA adapter with a
score head, on the demo RM config's modules) to OUT/reward-adapter, and that adapter merged into a plain
``LlamaForSequenceClassification`` (one label) to OUT/reward; each with the tokenizer. The two reward folders are
the same reward function: ours reads the adapter on the policy's base, trl 1.12 the merged model. Width, depth and
heads are given (default 768 x 12 layers, 12 heads); the MLP width is solved for the requested size.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import (
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedTokenizerBase,
)

from pipeline.errors import PipelineError, run_main

HIDDEN = 768
LAYERS = 12
HEADS = 12
MLP_MULTIPLE = 64
# The demo RM config's LoRA (configs/demo/rm.yaml): every linear layer of the body and the token embeddings.
REWARD_LORA = {
    "r": 16,
    "lora_alpha": 32,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens"],
}
REWARD_ADAPTER_DIR = "reward-adapter"
REWARD_DIR = "reward"
_SUFFIXES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}


def parse_param_count(text: str) -> int:
    """'100M' -> 100_000_000; also accepts K, B and plain integers."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMB]?)\s*", text.upper())
    if not match:
        raise PipelineError(f"--params '{text}' is not a size like 100M, 1.5B or 25000000")
    return int(float(match.group(1)) * _SUFFIXES[match.group(2)])


def llama_param_count(vocab_size: int, hidden: int, layers: int, intermediate: int) -> int:
    """Parameters of a Llama causal LM with tied embeddings and as many KV heads as query heads."""
    per_layer = 4 * hidden * hidden + 3 * hidden * intermediate + 2 * hidden
    return vocab_size * hidden + layers * per_layer + hidden


def llama_config(
    tokenizer: PreTrainedTokenizerBase,
    target_params: int,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    heads: int = HEADS,
) -> LlamaConfig:
    """A Llama config for ``tokenizer`` whose MLP width brings the model closest to ``target_params``."""
    if hidden % heads:
        raise PipelineError(f"--hidden {hidden} is not a multiple of --heads {heads}")
    vocab_size = len(tokenizer)
    without_mlp = llama_param_count(vocab_size, hidden, layers, 0)
    per_mlp_unit = 3 * hidden * layers
    intermediate = round((target_params - without_mlp) / per_mlp_unit / MLP_MULTIPLE) * MLP_MULTIPLE
    if intermediate < MLP_MULTIPLE:
        smallest = llama_param_count(vocab_size, hidden, layers, MLP_MULTIPLE)
        raise PipelineError(
            f"--params {target_params} is too small for {layers} layers of width {hidden}: the minimum is {smallest}"
        )
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_random_models(
    tokenizer_path: str,
    out: Path,
    params: int,
    seed: int = 0,
    hidden: int = HIDDEN,
    layers: int = LAYERS,
    heads: int = HEADS,
    base_name: str | None = None,
) -> dict[str, int]:
    """Save a random policy to ``out``, a random reward LoRA adapter on it to ``out/reward-adapter`` (naming
    ``base_name``, default ``out``, as its base) and the same reward model merged to ``out/reward``.

    Returns the parameter count of the policy and of the merged reward model.
    """
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise PipelineError(f"the tokenizer of '{tokenizer_path}' needs a pad token different from EOS")
    config = llama_config(tokenizer, params, hidden, layers, heads)
    torch.manual_seed(seed)
    policy = LlamaForCausalLM(config)
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)

    scorer = LlamaForSequenceClassification.from_pretrained(out, num_labels=1)
    scorer.config.pad_token_id = tokenizer.pad_token_id
    adapter_config = LoraConfig(task_type="SEQ_CLS", modules_to_save=["score"], **REWARD_LORA)
    reward = get_peft_model(scorer, adapter_config)
    with torch.no_grad():  # LoRA starts as a no-op (B = 0, or A = 0 on embeddings): random ones make it act
        for name, parameter in reward.named_parameters():
            if "lora_B" in name or "lora_embedding" in name:
                parameter.normal_(std=0.02)
    reward.peft_config["default"].base_model_name_or_path = base_name or str(out)
    reward.save_pretrained(out / REWARD_ADAPTER_DIR)
    tokenizer.save_pretrained(out / REWARD_ADAPTER_DIR)
    merged = reward.merge_and_unload()
    merged.save_pretrained(out / REWARD_DIR)
    tokenizer.save_pretrained(out / REWARD_DIR)
    return {"policy": policy.num_parameters(), "reward": merged.num_parameters()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokenizer", required=True, help="folder with the tokenizer to build the models for")
    parser.add_argument(
        "--out", required=True, type=Path, help="policy folder; the reward model goes to OUT/reward(-adapter)"
    )
    parser.add_argument(
        "--base_name", help="the policy's path as the reward adapter names it (default OUT; set it when OUT is moved)"
    )
    parser.add_argument("--params", default="100M", help="target size of each model, e.g. 100M")
    parser.add_argument("--hidden", type=int, default=HIDDEN)
    parser.add_argument("--layers", type=int, default=LAYERS)
    parser.add_argument("--heads", type=int, default=HEADS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not Path(args.tokenizer).is_dir():
        raise PipelineError(
            f"tokenizer folder '{args.tokenizer}' does not exist; build it with "
            "`python -m pipeline.tiny_base --data data/demo --out build/tiny-base`"
        )
    params = parse_param_count(args.params)
    counts = build_random_models(
        args.tokenizer, args.out, params, args.seed, args.hidden, args.layers, args.heads, args.base_name
    )
    print(
        f"policy: {counts['policy']:,} parameters in {args.out}; reward: a LoRA adapter on it in "
        f"{args.out / REWARD_ADAPTER_DIR}, merged ({counts['reward']:,}) in {args.out / REWARD_DIR}"
    )


if __name__ == "__main__":
    run_main(main)
