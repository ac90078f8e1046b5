"""The task model's class logits for (query, prompt state) pairs: batched forward passes and a cache of states.

How a state reaches the task model depends on its kind:

- ``masked`` and ``causal``: the exemplars go into the context before the query, as in TEMPERA. Each exemplar is
  the template filled with its text and the instruction, with its class's verbalizer where the template's
  ``<mask>`` is (masked) or after the filled template (causal); the exemplars and then the query's filled template
  are joined by ``separator``. The task model scores the verbalizers at the query's mask or after it.
- ``embedding``: the instruction goes into the template with the query; exemplars and verbalizers are class anchors:
  class c's anchor is the L2-normalized mean of the normalized embeddings of its verbalizer and of the state's
  exemplars of class c (a class without exemplars in the prompt is anchored by its verbalizer alone), as
  ``EmbeddingTaskModel.class_logits`` computes with ``anchors``. Embeddings of texts are cached, so the pool's
  exemplars and verbalizers are embedded once and every state costs one embedding of its filled template.

All pairs of a call go through the task model together (grouped by verbalizers for the masked and causal kinds,
whose ``class_logits`` takes one verbalizer list per call); the logits of the last ``cache_size`` pairs are kept.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch
import torch.nn.functional as F

from reward_models.task_models import MASK, EmbeddingTaskModel, TaskModel
from stages.prompt_edit.environment import Exemplar, PromptState


class LRU:
    """A dict that keeps its ``size`` most recently used entries."""

    def __init__(self, size: int) -> None:
        self.size, self.entries = size, OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self.entries

    def get(self, key: Hashable):
        self.entries.move_to_end(key)
        return self.entries[key]

    def put(self, key: Hashable, value) -> None:
        self.entries[key] = value
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


class StateScorer:
    """Class logits of the task model for queries under prompt states (see the module docstring)."""

    def __init__(
        self,
        task_model: TaskModel,
        template: str,
        pool: Sequence[Exemplar],
        separator: str = "\n",
        cache_size: int = 100_000,
    ) -> None:
        self.task_model, self.template, self.pool, self.separator = task_model, template, list(pool), separator
        self._logits = LRU(cache_size)
        self._embeddings = LRU(cache_size)
        self.pairs_scored = 0  # pairs that went through the task model (not served from the cache)

    def logits(self, queries: Sequence[str], states: Sequence[PromptState]) -> torch.Tensor:
        """Float32 class logits [len(queries), classes] of each query under the state beside it."""
        keys = list(zip(queries, states, strict=True))
        new = [key for key in dict.fromkeys(keys) if key not in self._logits]
        if new:
            computed = self._embedding_logits(new) if self._embeds else self._context_logits(new)
            for key, row in zip(new, computed, strict=True):
                self._logits.put(key, row)
            self.pairs_scored += len(new)
        return torch.stack([self._logits.get(key) for key in keys])

    @property
    def _embeds(self) -> bool:
        return isinstance(self.task_model, EmbeddingTaskModel)

    # ----- masked and causal: exemplars in the context --------------------------------------------------------

    def context_text(self, query: str, state: PromptState) -> str:
        """What a masked or causal task model reads for ``query`` under ``state``: the exemplars, then the query."""
        instruction = state.instruction_text
        parts = [self._demonstration(self.pool[i], state.verbalizers, instruction) for i in state.exemplars]
        parts += self.task_model.fill(self.template, [query], instruction)
        return self.separator.join(parts)

    def _demonstration(self, exemplar: Exemplar, verbalizers: Sequence[str], instruction: str) -> str:
        verbalizer = verbalizers[exemplar.label]
        if MASK in self.template:
            answer = verbalizer.strip().replace("{", "{{").replace("}", "}}")  # the template is a format string
            return self.task_model.fill(self.template.replace(MASK, answer), [exemplar.text], instruction)[0]
        return self.task_model.fill(self.template, [exemplar.text], instruction)[0] + verbalizer

    def _context_logits(self, pairs: list[tuple[str, PromptState]]) -> list[torch.Tensor]:
        groups: dict[tuple[str, ...], list[int]] = {}
        for position, (_, state) in enumerate(pairs):
            groups.setdefault(state.verbalizers, []).append(position)
        rows: list[torch.Tensor | None] = [None] * len(pairs)
        for verbalizers, positions in groups.items():
            texts = [self.context_text(*pairs[p]) for p in positions]
            for p, row in zip(positions, self.task_model.class_logits(texts, verbalizers), strict=True):
                rows[p] = row
        return rows

    # ----- embedding: exemplars and verbalizers as class anchors ------------------------------------------------

    def anchor_groups(self, state: PromptState) -> list[list[str]]:
        """Per class, the texts its anchor averages: its verbalizer, then the state's exemplars of that class."""
        return [
            [verbalizer, *(self.pool[i].text for i in state.exemplars if self.pool[i].label == label)]
            for label, verbalizer in enumerate(state.verbalizers)
        ]

    def _anchors(self, groups: list[list[str]]) -> torch.Tensor:
        """Normalized class anchors [classes, hidden]: each the mean of its group's (cached) embeddings."""
        return F.normalize(torch.stack([self.embed(group).mean(dim=0) for group in groups]), dim=-1)

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalized embeddings [len(texts), hidden] through the cache; the missing ones in one batched call."""
        new = [text for text in dict.fromkeys(texts) if text not in self._embeddings]
        if new:
            for text, row in zip(new, self.task_model.embed(new), strict=True):
                self._embeddings.put(text, row)
        return torch.stack([self._embeddings.get(text) for text in texts])

    def _embedding_logits(self, pairs: list[tuple[str, PromptState]]) -> list[torch.Tensor]:
        texts = [self.task_model.fill(self.template, [query], state.instruction_text)[0] for query, state in pairs]
        groups = [self.anchor_groups(state) for _, state in pairs]
        self.embed(texts + [text for classes in groups for group in classes for text in group])  # one batched pass
        anchors = torch.stack([self._anchors(classes) for classes in groups])  # [pairs, classes, hidden]
        logits = torch.einsum("ph,pch->pc", self.embed(texts), anchors) / self.task_model.temperature
        return list(logits.float().cpu())
