"""The prompt-editing environment: prompt states, the fixed set of edit actions, and how an action changes a state.

A prompt is an instruction (an ordered tuple of phrases), in-context exemplars (an ordered tuple of indices into the
exemplar pool, one per slot) and one verbalizer per class. The actions are known in advance and listed in this
order (``EditSpace.actions``):

- instruction: ``add j`` appends phrase j at the end (nothing if it is there), ``delete j`` removes phrase j (nothing
  if it is absent), ``swap j k`` exchanges the positions of phrases j and k (nothing unless both are there), for
  every phrase of the initial instruction and of the phrase pool, and every pair of them;
- exemplar: ``exemplar i j`` puts pool example j into slot i (nothing if j is already in the prompt), ``permute i k``
  exchanges the exemplars of slots i and k (only where their order matters: not for an embedding task model);
- verbalizer: ``verbalizer c v`` makes candidate v class c's verbalizer.

Stopping is not an action of the set: the policy stops by emitting its EOS token. Every action is deterministic, so
the current prompt is a function of the initial prompt and the actions taken so far.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pipeline.errors import PipelineError

KINDS = ("instruction", "exemplar", "verbalizer")
# each operation and the kind of edit it is
OPERATIONS = {
    "add": "instruction",
    "delete": "instruction",
    "swap": "instruction",
    "exemplar": "exemplar",
    "permute": "exemplar",
    "verbalizer": "verbalizer",
}


@dataclass(frozen=True)
class Exemplar:
    """A labelled example that can be shown to the task model."""

    text: str
    label: int  # class index


@dataclass(frozen=True)
class PromptState:
    """A prompt: instruction phrases in order, exemplars (pool indices) in slot order, one verbalizer per class."""

    instruction: tuple[str, ...]
    exemplars: tuple[int, ...]
    verbalizers: tuple[str, ...]

    @property
    def instruction_text(self) -> str:
        return " ".join(self.instruction)


@dataclass(frozen=True)
class Action:
    """One edit: its operation and the indices it names (see the module docstring)."""

    operation: str
    first: int
    second: int = -1

    @property
    def kind(self) -> str:
        return OPERATIONS[self.operation]


class EditSpace:
    """The actions that edit prompts built from these pools, and what each does to a state."""

    def __init__(
        self,
        phrases: Sequence[str],
        pool: Sequence[Exemplar],
        slots: int,
        candidates: Sequence[Sequence[str]],
        class_names: Sequence[str],
        permutations: bool = True,
    ) -> None:
        """``phrases``: every phrase an instruction may hold (the initial ones and the pool's); ``pool``: the
        exemplar candidates; ``slots``: exemplars per prompt; ``candidates``: the verbalizer candidates per class;
        ``permutations``: whether the order of the exemplars matters (not to an embedding task model, whose class
        anchors average them), and so whether there are permute actions."""
        self.phrases, self.pool, self.slots = list(phrases), list(pool), slots
        self.candidates = [list(c) for c in candidates]
        self.class_names = list(class_names)
        self.permutations = permutations
        pairs = list(itertools.combinations(range(len(self.phrases)), 2))
        slot_pairs = list(itertools.combinations(range(slots), 2)) if permutations else []
        self.actions: list[Action] = [
            *(Action("add", j) for j in range(len(self.phrases))),
            *(Action("delete", j) for j in range(len(self.phrases))),
            *(Action("swap", j, k) for j, k in pairs),
            *(Action("exemplar", i, j) for i in range(slots) for j in range(len(self.pool))),
            *(Action("permute", i, k) for i, k in slot_pairs),
            *(Action("verbalizer", c, v) for c, options in enumerate(self.candidates) for v in range(len(options))),
        ]

    def __len__(self) -> int:
        return len(self.actions)

    def as_dict(self) -> dict:
        """The pools as plain values (saved with a run; ``from_dict`` rebuilds the same space)."""
        return {
            "phrases": self.phrases,
            "pool": [{"text": e.text, "label": e.label} for e in self.pool],
            "slots": self.slots,
            "candidates": self.candidates,
            "class_names": self.class_names,
            "permutations": self.permutations,
        }

    @classmethod
    def from_dict(cls, saved: dict) -> EditSpace:
        pool = [Exemplar(row["text"], row["label"]) for row in saved["pool"]]
        return cls(
            saved["phrases"], pool, saved["slots"], saved["candidates"], saved["class_names"], saved["permutations"]
        )

    def apply(self, state: PromptState, index: int) -> PromptState:
        """The state after action ``index``; an action that does not apply leaves the state as it is."""
        action = self.actions[index]
        op, first, second = action.operation, action.first, action.second
        instruction, exemplars = list(state.instruction), list(state.exemplars)
        if op == "add" and self.phrases[first] not in instruction:
            return replace(state, instruction=(*instruction, self.phrases[first]))
        if op == "delete" and self.phrases[first] in instruction:
            instruction.remove(self.phrases[first])
            return replace(state, instruction=tuple(instruction))
        if op == "swap" and self.phrases[first] in instruction and self.phrases[second] in instruction:
            a, b = instruction.index(self.phrases[first]), instruction.index(self.phrases[second])
            instruction[a], instruction[b] = instruction[b], instruction[a]
            return replace(state, instruction=tuple(instruction))
        if op == "exemplar" and second not in exemplars:
            exemplars[first] = second
            return replace(state, exemplars=tuple(exemplars))
        if op == "permute":
            exemplars[first], exemplars[second] = exemplars[second], exemplars[first]
            return replace(state, exemplars=tuple(exemplars))
        if op == "verbalizer":
            verbalizers = list(state.verbalizers)
            verbalizers[first] = self.candidates[first][second]
            return replace(state, verbalizers=tuple(verbalizers))
        return state

    def replay(self, initial: PromptState, actions: Sequence[int]) -> list[PromptState]:
        """The states an episode passes through: ``initial``, then the state after each action."""
        states = [initial]
        for index in actions:
            states.append(self.apply(states[-1], index))
        return states

    def describe(self, index: int) -> str:
        """An action in words, e.g. ``add 'Sentiment:'`` or ``verbalizer positive ' love'``."""
        action = self.actions[index]
        op, first, second = action.operation, action.first, action.second
        if op in ("add", "delete"):
            return f"{op} {self.phrases[first]!r}"
        if op == "swap":
            return f"swap {self.phrases[first]!r} and {self.phrases[second]!r}"
        if op == "exemplar":
            example = self.pool[second]
            return f"exemplar slot {first} <- #{second} ({self.class_names[example.label]}) {_preview(example.text)!r}"
        if op == "permute":
            return f"permute exemplar slots {first} and {second}"
        return f"verbalizer {self.class_names[first]} {self.candidates[first][second]!r}"

    def render(self, state: PromptState) -> str:
        """A state in words, for people: the instruction, the exemplars with their classes, the verbalizers."""
        exemplars = "; ".join(
            f"#{i} ({self.class_names[self.pool[i].label]}) {_preview(self.pool[i].text)!r}" for i in state.exemplars
        )
        verbalizers = ", ".join(f"{name}={v!r}" for name, v in zip(self.class_names, state.verbalizers, strict=True))
        exemplars = exemplars or "none"
        return f"instruction: {state.instruction_text!r} | exemplars: {exemplars} | verbalizers: {verbalizers}"

    def text(self, state: PromptState) -> str:
        """A state written compactly (what the policy reads of the initial prompt): the instruction, the exemplars by
        pool number and class, and the verbalizers."""
        exemplars = " ".join(f"#{i}:{self.class_names[self.pool[i].label]}" for i in state.exemplars)
        return f"{state.instruction_text} | {exemplars} |{'|'.join(state.verbalizers)}"

    def effective(self, initial: PromptState, actions: Sequence[int]) -> list[int]:
        """The actions of an episode that changed the prompt (those that did not apply are left out)."""
        states = self.replay(initial, actions)
        return [index for index, before, after in zip(actions, states, states[1:], strict=False) if before != after]

    def counts(self, episodes: Sequence[Sequence[int]]) -> dict[str, float]:
        """The mean number of edits per episode and how often each kind and operation of edit was chosen, as shares
        of all edits (0 when there are none)."""
        chosen = [self.actions[index] for actions in episodes for index in actions]
        total = max(len(chosen), 1)
        shares = {kind: sum(a.kind == kind for a in chosen) / total for kind in KINDS}
        shares.update({op: sum(a.operation == op for a in chosen) / total for op in OPERATIONS})
        return {"mean_edits": len(chosen) / max(len(episodes), 1), **shares}

    def random_edits(self, initial: PromptState, count: int, rng: random.Random) -> list[int]:
        """``count`` edits drawn uniformly among the actions that change the prompt at each step."""
        state, chosen = initial, []
        while len(chosen) < count:
            index = rng.randrange(len(self.actions))
            after = self.apply(state, index)
            if after != state:
                state = after
                chosen.append(index)
        return chosen


def _preview(text: str, words: int = 8) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def check_initial_state(space: EditSpace, state: PromptState) -> None:
    """Refuse an initial prompt the space cannot edit: unknown phrases, exemplars or verbalizers, repeats."""
    unknown = [p for p in state.instruction if p not in space.phrases]
    if unknown:
        raise PipelineError(f"instruction phrase(s) {unknown} are not among the phrases {space.phrases}")
    if len(set(state.instruction)) != len(state.instruction):
        raise PipelineError(f"the instruction {list(state.instruction)} repeats a phrase; give each phrase once")
    if len(set(state.exemplars)) != len(state.exemplars) or any(not 0 <= i < len(space.pool) for i in state.exemplars):
        raise PipelineError(f"the initial exemplars {list(state.exemplars)} must be distinct examples of the pool")
    for name, verbalizer, options in zip(space.class_names, state.verbalizers, space.candidates, strict=True):
        if verbalizer not in options:
            raise PipelineError(
                f"the initial verbalizer {verbalizer!r} of class '{name}' is not among its candidates {options}: add "
                "it to verbalizer_candidates (the initial verbalizers are where the edits start from)"
            )
