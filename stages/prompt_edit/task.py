"""The editing task from configuration: the labelled data split into training queries, dev queries and test queries,
the exemplar pool, the edit space and the initial prompt, every input checked before any model is loaded.

The exemplar pool is a labelled file, or drawn from the training split (balanced over the classes, seeded, the
initial exemplars included); its examples are never used as queries. Training and dev queries are then drawn from
the rest of the training split, ``num_shots`` per class each; the test queries are the evaluation split.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pipeline.classification import LabelledTexts, few_shot_split, labelled_texts
from pipeline.config import DataArguments
from pipeline.datasets import load_raw, load_rows
from pipeline.errors import PipelineError
from stages.prompt_edit.config import CANDIDATE_SEPARATOR, EditTaskArguments, InitialPromptArguments
from stages.prompt_edit.environment import EditSpace, Exemplar, PromptState, check_initial_state


@dataclass
class EditTask:
    """Everything the editing works on: the classes, the query splits, the edit space and the initial prompt."""

    class_names: list[str]
    train: LabelledTexts
    dev: LabelledTexts
    test: LabelledTexts
    space: EditSpace
    initial: PromptState


def check_prompt_arguments(task: EditTaskArguments, prompt: InitialPromptArguments) -> list[list[str]]:
    """Refuse an initial prompt or pools that cannot be edited; returns the verbalizer candidates of each class."""
    classes = task.classes
    if len(classes) < 2 or len(set(classes)) != len(classes):
        raise PipelineError(f"classes {classes!r}: give at least two distinct class names")
    for name, values in (("verbalizers", prompt.verbalizers), ("verbalizer_candidates", prompt.verbalizer_candidates)):
        if len(values) != len(classes):
            raise PipelineError(
                f"{name}: {len(values)} given for {len(classes)} classes {classes}; give one per class, in the order "
                "of `classes`"
            )
    candidates = prompt.candidate_lists()
    for name, options in zip(classes, candidates, strict=True):
        if not any(option.strip() for option in options) or any(not option.strip() for option in options):
            raise PipelineError(
                f"the verbalizer candidates of class '{name}' ({options}) are empty or hold an empty one: list its "
                f"candidate words separated by '{CANDIDATE_SEPARATOR}', e.g. ' terrible| bad'"
            )
    if not prompt.instruction_pool:
        raise PipelineError(
            "instruction_pool is empty: give the candidate phrases that instruction edits may add (TEMPERA edits "
            "the instruction with phrases from a pool)"
        )
    if not prompt.exemplars and prompt.num_exemplars < 1:
        raise PipelineError(f"num_exemplars must be at least 1, got {prompt.num_exemplars}")
    if prompt.exemplar_pool is None and prompt.exemplar_pool_size < 1:
        raise PipelineError(
            f"exemplar_pool_size is {prompt.exemplar_pool_size}: the exemplar pool is empty; draw at least one "
            "example per class, or give an exemplar_pool file"
        )
    return candidates


def build_edit_task(
    data_args: DataArguments, task: EditTaskArguments, prompt: InitialPromptArguments, seed: int
) -> EditTask:
    """Load the data and build the pools, the edit space and the initial prompt (see the module docstring)."""
    candidates = check_prompt_arguments(task, prompt)
    classes = task.classes
    train_rows, test_rows = load_raw(data_args)
    source = f"{data_args.dataset_name} (training split)"
    training = labelled_texts(train_rows, classes, task.text_column, task.label_column, source)
    test_source = data_args.eval_dataset_name or f"{data_args.dataset_name} (evaluation split)"
    test = labelled_texts(test_rows, classes, task.text_column, task.label_column, test_source)
    pool = exemplar_pool(prompt, task, training, seed)
    missing = [name for label, name in enumerate(classes) if all(e.label != label for e in pool)]
    if missing:
        raise PipelineError(
            f"the exemplar pool has no example of class(es) {missing}: exemplar edits could never show them; give "
            "a pool with every class"
        )
    texts = [e.text for e in pool]
    slots = [texts.index(text) for text in prompt.exemplars] or list(range(min(prompt.num_exemplars, len(pool))))
    if not prompt.exemplars and prompt.num_exemplars > len(pool):
        raise PipelineError(f"num_exemplars ({prompt.num_exemplars}) is more than the {len(pool)} pool examples")
    in_pool = set(texts)
    rest = [(text, label) for text, label in zip(training.texts, training.labels, strict=True) if text not in in_pool]
    remaining = LabelledTexts([text for text, _ in rest], [label for _, label in rest])
    train, dev = few_shot_split(remaining, classes, task.num_shots, seed, f"{source}, without the exemplar pool")
    phrases = list(dict.fromkeys([*prompt.instruction, *prompt.instruction_pool]))
    space = EditSpace(phrases, pool, len(slots), candidates, classes, permutations=task.task_model_kind != "embedding")
    initial = PromptState(tuple(prompt.instruction), tuple(slots), tuple(prompt.verbalizers))
    check_initial_state(space, initial)
    return EditTask(list(classes), train, dev, test, space, initial)


def exemplar_pool(
    prompt: InitialPromptArguments, task: EditTaskArguments, training: LabelledTexts, seed: int
) -> list[Exemplar]:
    """The exemplar pool: the file's rows, or the initial exemplars followed by examples drawn from ``training``
    (``exemplar_pool_size`` in all, as balanced over the classes as the data allows, classes alternating)."""
    if prompt.exemplar_pool is not None:
        rows = load_rows(prompt.exemplar_pool)
        found = labelled_texts(rows, task.classes, task.text_column, task.label_column, prompt.exemplar_pool)
        pool = [Exemplar(text, label) for text, label in zip(found.texts, found.labels, strict=True)]
        if not pool:
            raise PipelineError(f"the exemplar pool {prompt.exemplar_pool} is empty: give candidate exemplars")
        _find(prompt.exemplars, pool, prompt.exemplar_pool)
        return pool
    known = {text: label for text, label in zip(training.texts, training.labels, strict=True)}
    initial = [Exemplar(text, known[text]) for text in _find(prompt.exemplars, known, "the training split")]
    taken = {e.text for e in initial}
    by_class = [[t for t, label in known.items() if label == c and t not in taken] for c in range(len(task.classes))]
    rng = random.Random(seed)
    for texts in by_class:
        rng.shuffle(texts)
    drawn: list[Exemplar] = []
    while len(initial) + len(drawn) < prompt.exemplar_pool_size and any(by_class):
        for label, texts in enumerate(by_class):
            if texts and len(initial) + len(drawn) < prompt.exemplar_pool_size:
                drawn.append(Exemplar(texts.pop(), label))
    return initial + drawn


def _find(texts: list[str], known, where: str) -> list[str]:
    """``texts``, each checked to be among ``known`` texts (or exemplars) of ``where``."""
    available = {e.text if isinstance(e, Exemplar) else e for e in known}
    for text in texts:
        if text not in available:
            raise PipelineError(
                f"initial exemplar {text[:80]!r} is not in {where}: an initial exemplar must be one of its texts, "
                "written exactly"
            )
    if len(set(texts)) != len(texts):
        raise PipelineError("the initial exemplars repeat a text; give each exemplar once")
    return texts
