"""Build the offline demo's base model: a byte-level BPE tokenizer trained on the demo corpus and a small,
randomly initialised Llama, saved so that plain ``from_pretrained`` loads both.

``python -m pipeline.tiny_base --data data/demo --out build/tiny-base [--seed 0]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from pipeline.errors import PipelineError, run_main

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
ROLE_MARKERS = ("<|system|>", "<|user|>", "<|assistant|>")
TEXT_FIELDS = ("prompt", "completion", "chosen", "rejected")
VOCAB_SIZE = 2048
MAX_LENGTH = 256
DEFAULT_SIZE = {"hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4, "num_attention_heads": 4}

# Each message is "<|role|>\n{content}</s>\n"; the assistant's content (with its EOS) sits in a generation block,
# so trainers can compute an assistant-only loss from the template's assistant mask.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


def corpus(data_dir: Path) -> Iterator[str]:
    """Every text field of every row of the demo jsonl files, in a fixed order."""
    files = sorted(Path(data_dir).glob("*.jsonl"))
    if not files:
        raise PipelineError(f"no *.jsonl files in {data_dir}: run `python -m data.generate --out {data_dir}`")
    for path in files:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise PipelineError(
                        f"{path} line {number} is not valid JSON ({error}); regenerate the file"
                    ) from error
                yield from (row[field] for field in TEXT_FIELDS if isinstance(row.get(field), str))


def train_tokenizer(data_dir: Path, vocab_size: int = VOCAB_SIZE) -> PreTrainedTokenizerFast:
    """Byte-level BPE without a prefix space, so a completion that starts with a space tokenizes the same on its
    own as after its prompt; BOS is prepended to every encoded text, EOS is left to the trainers."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, UNK, *ROLE_MARKERS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(data_dir), trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tokenizer.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_MARKERS),
        model_max_length=MAX_LENGTH,
        chat_template=CHAT_TEMPLATE,
    )


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, **size: int) -> LlamaForCausalLM:
    """A randomly initialised Llama sized by ``size`` (LlamaConfig fields), with the tokenizer's special ids."""
    settings = {**DEFAULT_SIZE, **size}
    settings.setdefault("num_key_value_heads", settings["num_attention_heads"])
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        max_position_embeddings=MAX_LENGTH,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **settings,
    )
    with torch.random.fork_rng(devices=[]):  # seeded initialisation without touching the caller's generator
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)  # its generation config takes the special ids from the model config


def build_tiny_base(data_dir: Path, out_dir: Path, seed: int = 0, **size: int) -> Path:
    """Train the tokenizer, build the model and save both into ``out_dir`` (replacing it whole); returns it."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(Path(data_dir))
    model = build_model(tokenizer, seed=seed, **size)
    work = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    work.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
    try:
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        previous = out_dir.with_name(f".{out_dir.name}.previous")
        if out_dir.exists():
            shutil.rmtree(previous, ignore_errors=True)
            os.replace(out_dir, previous)
        os.replace(work, out_dir)
        shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"), help="folder with the demo jsonl files")
    parser.add_argument("--out", type=Path, default=Path("build/tiny-base"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = build_tiny_base(args.data, args.out, seed=args.seed)
    config = json.loads((out / "config.json").read_text())
    sizes = ", ".join(f"{key} {config[key]}" for key in ("vocab_size", *DEFAULT_SIZE))
    print(f"tiny base model ({sizes}) and tokenizer saved to {out}")


if __name__ == "__main__":
    run_main(main)
