"""Load tokenizers, policies, reward and value models from a hub id or a local path; LoRA and 4/8-bit options."""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path

import torch
from peft import LoraConfig, PeftConfig, PeftModel
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from trl.trainer.utils import disable_dropout_in_model, get_peft_config, get_quantization_config

from pipeline.config import ModelArguments
from pipeline.errors import PipelineError
from pipeline.noise import lm_head_unaffected, new_score_head

_TRUE = {"1", "true", "yes", "on"}
MODEL_FOLDER_HOLDS = (
    "A model folder holds config.json, the weights (*.safetensors) and the tokenizer files (tokenizer.json or "
    "tokenizer_config.json with its vocabulary), as save_pretrained writes them; a LoRA adapter folder holds "
    "adapter_config.json instead of config.json"
)
# How tokenizer files start or end: tokenizer.json, tokenizer_config.json, vocab.json / vocab.txt, spiece.model,
# sentencepiece.bpe.model, tokenizer.model, *.tiktoken.
_TOKENIZER_FILE_STARTS = ("tokenizer", "vocab", "spiece", "sentencepiece")
_TOKENIZER_FILE_ENDS = (".model", ".tiktoken")


def hub_offline() -> bool:
    """Whether the Hugging Face hub is switched off (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def looks_like_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything else (./x, /x, a/b/c, x.json) is meant as a local path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.sep != "/" and os.sep in name


def resolve_model_source(name_or_path: str | None, what: str) -> str:
    """Check a model reference before any hub call: a local path must exist; a hub id needs a reachable hub."""
    if not name_or_path:
        raise PipelineError(f"no {what} given: set model_name_or_path to a local folder or a hub id")
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        if not os.path.isdir(expanded):
            raise PipelineError(f"{what} '{name_or_path}' is a file; give the folder that holds config.json")
        if not any(os.path.isfile(os.path.join(expanded, name)) for name in ("config.json", "adapter_config.json")):
            raise PipelineError(
                f"{what} '{name_or_path}' is not a model folder: it holds no config.json. {MODEL_FOLDER_HOLDS}"
            )
        return expanded
    if looks_like_path(name_or_path):
        raise PipelineError(
            f"{what} path '{name_or_path}' does not exist; check the path (or run the stage that makes it)"
        )
    if hub_offline():
        raise PipelineError(
            f"{what} '{name_or_path}' is not a local folder and no hub is reachable (HF_HUB_OFFLINE=1): "
            "download the model where a hub is reachable and give its local path"
        )
    return name_or_path


def load_tokenizer(source: str, pad_token: str | None = None, padding_side: str = "right") -> PreTrainedTokenizerBase:
    """Load a tokenizer and make sure it pads with a token different from EOS."""
    if os.path.isdir(source) and not any(
        name.startswith(_TOKENIZER_FILE_STARTS) or name.endswith(_TOKENIZER_FILE_ENDS) for name in os.listdir(source)
    ):
        raise PipelineError(f"the folder '{source}' holds no tokenizer files. {MODEL_FOLDER_HOLDS}")
    tokenizer = AutoTokenizer.from_pretrained(source, padding_side=padding_side)
    if tokenizer.pad_token is None:
        if pad_token is None:
            # An encoder's tokenizer has no EOS: then there is none to avoid.
            not_eos = f" other than its EOS token '{tokenizer.eos_token}'" if tokenizer.eos_token else ""
            example = f"its unk token '{tokenizer.unk_token}'" if tokenizer.unk_token else "a reserved special token"
            raise PipelineError(
                f"the tokenizer of '{source}' has no pad token: pass --tokenizer_pad_token with a token from its "
                f"vocabulary{not_eos} (for example {example})"
            )
        if pad_token not in tokenizer.get_vocab():
            raise PipelineError(f"tokenizer_pad_token '{pad_token}' is not in the vocabulary of '{source}'")
        tokenizer.pad_token = pad_token
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        raise PipelineError(
            f"the tokenizer of '{source}' pads with its EOS token '{tokenizer.eos_token}'; with pad == EOS the policy "
            "never learns to stop: pass --tokenizer_pad_token with another token from its vocabulary"
        )
    return tokenizer


def model_load_kwargs(model_args: ModelArguments) -> dict:
    """``from_pretrained`` keyword arguments for dtype and 4/8-bit quantization (bitsandbytes)."""
    kwargs: dict = {"dtype": model_args.dtype}
    # TRL passes dtype on as the 4-bit compute dtype, and "auto" is no torch dtype: compute in float32 then.
    quantization = get_quantization_config(
        replace(model_args, dtype=None) if model_args.dtype == "auto" else model_args
    )
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        kwargs["device_map"] = _local_device_map()
    return kwargs


def _local_device_map() -> dict[str, int | str]:
    """Place a quantized model on this process's device (quantized models cannot be moved after loading)."""
    from accelerate import PartialState

    device = PartialState().device
    return {"": device.index if device.type == "cuda" and device.index is not None else device.type}


def _keep_4bit_trainable(model: PreTrainedModel) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On CPUs with AVX512-BF16 the first eval-mode forward without gradients repacks each layer for a kernel that has
    no backward, for good: every later training step would then silently get zero gradients (no LoRA update).
    """
    if not getattr(model, "is_loaded_in_4bit", False):
        return
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def match_saved_modules_dtype(model: PreTrainedModel) -> None:
    """Give the fully trained modules of a quantized LoRA model (``modules_to_save``, e.g. a reward model's score
    head) the dtype of the hidden states they read.

    TRL's trainers store every trainable weight of a quantized model in bfloat16. LoRA layers cast their input to
    match; plain modules do not, so with a float32 compute dtype a bfloat16 head fails on float32 hidden states.
    """
    if not (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
        return
    from peft.utils import ModulesToSaveWrapper

    dtype = model.get_input_embeddings().weight.dtype
    for module in model.modules():
        if isinstance(module, ModulesToSaveWrapper):
            module.to(dtype)


def load_causal_lm(source: str, model_args: ModelArguments) -> PreTrainedModel:
    """A causal LM for generation or training, with dropout off (RLHF detail: dropout breaks logprob ratios)."""
    model = AutoModelForCausalLM.from_pretrained(source, **model_load_kwargs(model_args))
    disable_dropout_in_model(model)
    _keep_4bit_trainable(model)
    return model


def is_lora_adapter(source: str | Path) -> bool:
    """Whether ``source`` is a local folder holding a PEFT adapter (``adapter_config.json``) rather than a model."""
    return (Path(source) / "adapter_config.json").is_file()


def adapter_base(adapter_dir: str | Path) -> str:
    """The base model (hub id or path) a saved PEFT adapter was trained on."""
    base = PeftConfig.from_pretrained(str(adapter_dir)).base_model_name_or_path
    if not base:
        raise PipelineError(f"the adapter in {adapter_dir} does not name its base model (base_model_name_or_path)")
    return base


def load_sequence_scorer(
    source: str, model_args: ModelArguments, pad_token_id: int, new_head: bool = False
) -> PreTrainedModel:
    """A sequence-classification model with one output (reward or value), dropout off. A LoRA adapter folder is
    applied to the base it names and merged into it. ``new_head``: ``source`` may be a causal LM, whose score head
    the caller trains (no load report for it)."""
    if is_lora_adapter(source):
        if model_args.load_in_4bit or model_args.load_in_8bit:
            raise PipelineError(
                f"{source} is a LoRA adapter, which cannot be merged into a 4/8-bit model: give the merged reward "
                "model folder (the RM stage writes it to model/)"
            )
        base = resolve_model_source(adapter_base(source), f"base model of the adapter in {source}")
        with new_score_head():  # the adapter brings it
            model = AutoModelForSequenceClassification.from_pretrained(
                base, num_labels=1, **model_load_kwargs(model_args)
            )
        with lm_head_unaffected():
            model = PeftModel.from_pretrained(model, source).merge_and_unload()
    else:
        with new_score_head() if new_head else nullcontext():
            model = AutoModelForSequenceClassification.from_pretrained(
                source, num_labels=1, **model_load_kwargs(model_args)
            )
    model.config.pad_token_id = pad_token_id
    disable_dropout_in_model(model)
    _keep_4bit_trainable(model)
    return model


def lora_config(model_args: ModelArguments, task_type: str) -> LoraConfig | None:
    """TRL's LoRA config from the model options for ``task_type`` ('CAUSAL_LM' or 'SEQ_CLS'); None without LoRA."""
    if not model_args.use_peft:
        return None
    model_args.lora_task_type = task_type
    config = get_peft_config(model_args)
    if task_type == "SEQ_CLS" and not config.modules_to_save:
        config.modules_to_save = ["score"]
    return config


def no_lora_target_error(model: PreTrainedModel, targets: object, source: str) -> PipelineError:
    """The error for LoRA ``targets`` that match no module of ``model``: the names its layers have, what to set."""
    layers = (name for name, module in model.named_modules() if isinstance(module, nn.Linear | nn.Embedding))
    names = sorted({name.rsplit(".", 1)[-1] for name in layers})
    return PipelineError(
        f"lora_target_modules {targets} match no module of '{source}', whose linear and embedding layers are named "
        f"{', '.join(names)}: set --lora_target_modules all-linear (every linear layer) or some of those names, "
        "or --use_peft false"
    )


def merge_adapter(base_source: str, adapter_dir: Path, out_dir: Path, scorer: bool = False) -> None:
    """Apply a saved LoRA adapter to a full-precision copy of its base and save the merged plain model.

    Reloading the base unquantized makes this work for QLoRA adapters too (4-bit weights cannot be merged).
    """
    auto_class = AutoModelForSequenceClassification if scorer else AutoModelForCausalLM
    extra = {"num_labels": 1} if scorer else {}
    # A reward model: the adapter brings the score head, and there is no LM head.
    with new_score_head() if scorer else nullcontext():
        base = auto_class.from_pretrained(base_source, dtype=torch.float32, **extra)
    with lm_head_unaffected() if scorer else nullcontext():
        merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    merged.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(adapter_dir).save_pretrained(out_dir)
