"""Tiny task models for the prompt-optimization tests: byte-level BPE tokenizers with RoBERTa's, Llama's or an
EOS-appending convention, masked / causal / encoder models built from configs, and a forward-call counter."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertModel,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

# "great" and "terrible" appear at the start of a text and after a space, so both spellings become single tokens.
CORPUS = [
    "The movie was great. Great acting, a great story.",
    "The movie was terrible. Terrible acting, a terrible story.",
    "great fun and a good time",
    "terrible food and a bad time",
    "It was good, not bad. The hotel was fine and the staff were kind.",
    "What a wonderful cafe. What an awful bar.",
] * 20
PAD, BOS, EOS, UNK, MASK = "<pad>", "<s>", "</s>", "<unk>", "<mask>"


def bpe_tokenizer(style: str) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer without a prefix space; ``style`` says what it adds around a text:
    'roberta' (<s> text </s>, with a <mask> that absorbs the space before it), 'bos' (<s> text, like Llama),
    'bos_eos' (<s> text </s>) or 'plain' (nothing, like GPT-2)."""
    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [PAD, BOS, EOS, UNK] + ([MASK] if style == "roberta" else [])
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS, trainer=trainer)
    if style == "roberta":
        tokenizer.add_special_tokens([AddedToken(MASK, lstrip=True)])
    single = {"roberta": f"{BOS} $A {EOS}", "bos": f"{BOS} $A", "bos_eos": f"{BOS} $A {EOS}", "plain": "$A"}[style]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(token, tokenizer.token_to_id(token)) for token in (BOS, EOS)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        mask_token=MASK if style == "roberta" else None,
    )


def tiny_masked_lm(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> RobertaForMaskedLM:
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=130,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    return RobertaForMaskedLM(config)


def tiny_causal_lm(tokenizer: PreTrainedTokenizerFast, architecture: str = "llama", seed: int = 0) -> PreTrainedModel:
    torch.manual_seed(seed)
    if architecture == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128))
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return LlamaForCausalLM(config)


def tiny_encoder(vocab_size: int, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2
    )
    return BertModel(config)


def save(model: PreTrainedModel, tokenizer, folder: Path) -> Path:
    """Save model and tokenizer into ``folder`` as a hub model is laid out; returns ``folder``."""
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


class ForwardCounter:
    """Counts forward calls of a module and the rows they carried."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls, self.rows = 0, 0
        self.handle = module.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        self.rows += ids.shape[0]

    def remove(self) -> None:
        self.handle.remove()


def raise_logit(model: PreTrainedModel, token_id: int, delta: float) -> torch.utils.hooks.RemovableHandle:
    """Add ``delta`` to one vocabulary entry's output logit (as if its output bias were raised)."""

    def hook(module, inputs, output):
        output = output.clone()
        output[..., token_id] += delta
        return output

    return model.get_output_embeddings().register_forward_hook(hook)
