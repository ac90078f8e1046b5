"""Load users' datasets (local files, folders or hub ids) and normalize the common formats to TRL's.

Every stage gets its rows through one of ``load_preference_data`` (reward model), ``load_sft_data`` (SFT) or
``load_prompt_data`` (RL). Each one loads the train and eval rows (:func:`load_raw`), detects the format of each
from its columns and values (or takes ``dataset_format``), and rewrites the rows into the format the stage needs.
Bad rows stop the run with a :class:`PipelineError` naming the source, the row index (0-based, counted in the
file or split the row came from) and the column.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import pandas
import pyarrow
import pyarrow.parquet
from datasets import Dataset
from transformers import PreTrainedTokenizerBase

from pipeline.config import DataArguments
from pipeline.errors import PipelineError
from pipeline.models import hub_offline, looks_like_path

logger = logging.getLogger(__name__)

PREFERENCE_FORMATS: tuple[str, ...] = ("preference", "implicit_preference", "hh_rlhf", "ultrafeedback", "shp", "tldr")
SFT_FORMATS: tuple[str, ...] = ("prompt_completion", "messages", "text")
PROMPT_FORMAT = "prompt"

# The columns each format is read from; with auto-detection a format is only considered when they are all present.
FORMAT_COLUMNS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "implicit_preference": ("chosen", "rejected"),
    "hh_rlhf": ("chosen", "rejected"),
    "ultrafeedback": ("prompt", "chosen", "rejected"),
    "shp": ("history", "human_ref_A", "human_ref_B", "labels"),
    "tldr": ("info", "summaries", "choice"),
    "prompt_completion": ("prompt", "completion"),
    "messages": ("messages",),
    "text": ("text",),
    PROMPT_FORMAT: ("prompt",),
}
_FORMAT_HELP = {
    "preference": "prompt + chosen + rejected, text or message lists, optional margin (TRL explicit preference)",
    "implicit_preference": "chosen + rejected that start with the same prompt (TRL implicit preference)",
    "hh_rlhf": 'chosen + rejected dialogues "\\n\\nHuman: ...\\n\\nAssistant: ..." (Anthropic HH-RLHF)',
    "ultrafeedback": "prompt text + chosen/rejected message lists (UltraFeedback binarized)",
    "shp": "history + human_ref_A + human_ref_B + labels (Stanford SHP)",
    "tldr": "info + summaries + choice (OpenAI TL;DR comparisons)",
    "prompt_completion": "prompt + completion, text or message lists",
    "messages": "messages, a list of {role, content}",
    "text": "text",
    PROMPT_FORMAT: "prompt, text or a message list",
}
_ACCEPTED = {
    "preference": PREFERENCE_FORMATS,
    "sft": SFT_FORMATS + PREFERENCE_FORMATS,
    "prompt": (PROMPT_FORMAT,) + SFT_FORMATS + PREFERENCE_FORMATS,
}
_PURPOSE = {
    "preference": "reward-model (preference) training",
    "sft": "supervised fine-tuning",
    "prompt": "RL prompts",
}
_READERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
_FOLDER_SPLITS = ("train", "test", "eval", "validation")
_HH_ASSISTANT = "\n\nAssistant:"
_COLUMN_ORDER = ("prompt", "completion", "chosen", "rejected", "margin", "messages", "text")


# ---------------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class _Split:
    """Rows of one split, where they came from, and each row's index in that source (None: the same as here)."""

    rows: Dataset
    source: str
    row_numbers: list[int] | None = None


def load_raw(args: DataArguments) -> tuple[Dataset, Dataset]:
    """Train and eval rows as stored (after ``column_mapping``), before format normalization.

    Eval rows come from ``eval_dataset_name`` if set, else from the dataset's ``dataset_test_split``, else from a
    seeded hold-out of ``eval_fraction`` of the training rows; ``max_*_samples`` then keep the first rows.
    """
    train, evaluation = _load_splits(args)
    return train.rows, evaluation.rows


def _load_splits(args: DataArguments) -> tuple[_Split, _Split]:
    if not args.dataset_name:
        raise PipelineError(
            "no dataset given: set dataset_name to a local .jsonl/.json/.csv/.parquet file, a folder of such files, "
            "or a hub dataset id"
        )
    splits = _load_source(args.dataset_name, args.dataset_config)
    train = _pick_split(splits, args.dataset_train_split, args.dataset_name, "dataset_train_split")
    train = _prepare(train, args.column_mapping)
    if args.eval_dataset_name:
        eval_splits = _load_source(args.eval_dataset_name, None)
        if args.dataset_test_split in eval_splits or len(eval_splits) != 1:
            evaluation = _pick_split(eval_splits, args.dataset_test_split, args.eval_dataset_name, "dataset_test_split")
        else:
            evaluation = next(iter(eval_splits.values()))
        evaluation = _prepare(evaluation, args.column_mapping)
    elif args.dataset_test_split in splits and args.dataset_test_split != args.dataset_train_split:
        evaluation = _prepare(splits[args.dataset_test_split], args.column_mapping)
    else:
        logger.info(
            "%s has no '%s' split (splits: %s): holding out %.1f%% of the training rows for evaluation",
            args.dataset_name,
            args.dataset_test_split,
            ", ".join(splits),
            100 * args.eval_fraction,
        )
        train, evaluation = _hold_out(train, args.eval_fraction)
    return _first(train, args.max_train_samples, "max_train_samples"), _first(
        evaluation, args.max_eval_samples, "max_eval_samples"
    )


def load_rows(name: str) -> Dataset:
    """Every row of a local file, of a folder's training files, or of a hub dataset's train split (as stored),
    with the same checks and messages as the stages' data."""
    splits = _load_source(name, None)
    return (splits.get("train") or next(iter(splits.values()))).rows


def _load_source(name: str, config: str | None) -> dict[str, _Split]:
    """All splits of a local file (one split, 'train'), a local folder or a hub dataset; local paths come first."""
    path = Path(name).expanduser()
    if path.exists():
        return _load_folder(path, name) if path.is_dir() else {"train": _read_files([path], name, "train")}
    if looks_like_path(name) or path.suffix.lower() in _READERS:
        raise PipelineError(f"dataset path '{name}' does not exist; check the path")
    return _load_hub(name, config)


def _load_folder(folder: Path, name: str) -> dict[str, _Split]:
    """Splits of a folder by file name: train*, test*, eval*, validation*."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _READERS)
    if not files:
        raise PipelineError(f"dataset folder '{name}' holds no .jsonl, .json, .csv or .parquet files")
    by_split: dict[str, list[Path]] = {}
    for file in files:
        split = next((s for s in _FOLDER_SPLITS if file.name.lower().startswith(s)), None)
        if split is None:
            raise PipelineError(
                f"cannot tell which split '{file}' belongs to: name the data files in '{name}' "
                "train*, test*, eval* or validation*"
            )
        by_split.setdefault(split, []).append(file)
    return {
        split: _read_files(split_files, f"{name} ({split} split)", split) for split, split_files in by_split.items()
    }


def _read_files(files: list[Path], source: str, split: str) -> _Split:
    suffixes = {file.suffix.lower() for file in files}
    if len(suffixes) > 1:
        raise PipelineError(f"{source} mixes file types ({', '.join(sorted(suffixes))}); use one type per split")
    suffix = suffixes.pop()
    if suffix not in _READERS:
        raise PipelineError(f"unsupported file type '{suffix}' for '{files[0]}': use .jsonl, .json, .csv or .parquet")
    for file in files:
        _FILE_CHECKS[_READERS[suffix]](file)
    try:
        rows = datasets.load_dataset(_READERS[suffix], data_files={split: [str(f) for f in files]}, split=split)
    except (datasets.exceptions.DatasetsError, pyarrow.ArrowException, ValueError) as error:
        cause = error.__cause__ or error
        raise PipelineError(f"could not read {source}: {cause}") from error
    return _Split(rows, source)


def _check_json_file(file: Path) -> None:
    """Name the line of malformed JSON (the JSON reader only says 'row N' of an internal batch)."""
    try:
        with file.open(encoding="utf-8") as handle:
            if file.suffix.lower() == ".json" and handle.read(4096).lstrip().startswith("["):
                handle.seek(0)
                _check_json_array(handle.read(), file)
                return
            handle.seek(0)
            _check_json_lines(handle, file)
    except UnicodeDecodeError as error:
        raise PipelineError(f"'{file}' is not UTF-8 text ({error})") from error


def _check_json_array(text: str, file: Path) -> None:
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as error:
        raise PipelineError(f"'{file}' is not valid JSON: line {error.lineno}: {error.msg}") from error
    if not rows:
        raise PipelineError(f"'{file}' is empty: it has no rows")


def _check_json_lines(lines: Iterable[str], file: Path) -> None:
    empty = True
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        empty = False
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise PipelineError(
                f"'{file}', line {number} is not valid JSON ({error.msg}); JSON-lines files hold one object per line"
            ) from error
        if not isinstance(row, dict):
            raise PipelineError(f"'{file}', line {number} is not a JSON object; write one {{...}} row per line")
    if empty:
        raise PipelineError(f"'{file}' is empty: it has no rows")


def _check_parquet_file(file: Path) -> None:
    try:
        rows = pyarrow.parquet.ParquetFile(file).metadata.num_rows
    except pyarrow.ArrowException as error:
        raise PipelineError(f"could not read '{file}' as parquet: {error}") from error
    if rows == 0:
        raise PipelineError(f"'{file}' is empty: it has no rows")


def _check_csv_file(file: Path) -> None:
    try:
        first = pandas.read_csv(file, nrows=1)
    except (pandas.errors.ParserError, pandas.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise PipelineError(f"could not read '{file}' as CSV: {error}") from error
    if first.empty:
        raise PipelineError(f"'{file}' is empty: it has no rows")


# Checks before reading: the readers' own errors on these files name no file or line, or are obscure.
_FILE_CHECKS: dict[str, Callable[[Path], None]] = {
    "json": _check_json_file,
    "parquet": _check_parquet_file,
    "csv": _check_csv_file,
}


def _load_hub(name: str, config: str | None) -> dict[str, _Split]:
    try:
        loaded = datasets.load_dataset(name, config)
    except ConnectionError as error:  # what datasets raises offline when the dataset is not in its cache
        reason = (
            "no hub is reachable (HF_HUB_OFFLINE=1)" if hub_offline() else f"the hub could not be reached ({error})"
        )
        raise PipelineError(
            f"dataset '{name}' is not a local file or folder and {reason}: give the path of a local "
            ".jsonl/.json/.csv/.parquet file or folder of such files"
        ) from error
    except datasets.exceptions.DatasetNotFoundError as error:
        raise PipelineError(f"dataset '{name}' was not found on the hub (or is gated): check the id") from error
    except ValueError as error:  # e.g. a missing or unknown configuration name
        raise PipelineError(f"could not load dataset '{name}' (dataset_config={config!r}): {error}") from error
    return {split: _Split(rows, f"{name} ({split} split)") for split, rows in loaded.items()}


def _pick_split(splits: dict[str, _Split], split: str, name: str, option: str) -> _Split:
    if split not in splits:
        raise PipelineError(f"dataset '{name}' has no '{split}' split (it has: {', '.join(splits)}); set {option}")
    return splits[split]


def _prepare(split: _Split, mapping: dict[str, str] | None) -> _Split:
    """Refuse empty data and rename columns per ``column_mapping`` (their column -> ours)."""
    if len(split.rows) == 0:
        raise PipelineError(f"{split.source} has no rows")
    if not mapping:
        return split
    columns = split.rows.column_names
    missing = [column for column in mapping if column not in columns]
    if missing:
        raise PipelineError(
            f"column_mapping names column(s) {', '.join(missing)} that {split.source} does not have; "
            f"its columns are: {', '.join(columns)}"
        )
    renames = {old: new for old, new in mapping.items() if old != new}
    targets = list(renames.values())
    kept = [column for column in columns if column not in renames]
    clashes = sorted({new for new in targets if targets.count(new) > 1 or new in kept})
    if clashes:
        raise PipelineError(
            f"column_mapping would give {split.source} two columns named {', '.join(clashes)}; "
            "map each column name once, and rename or drop the existing one"
        )
    return _Split(split.rows.rename_columns(renames), split.source, split.row_numbers)


def _hold_out(train: _Split, fraction: float) -> tuple[_Split, _Split]:
    """A seeded (seed 0) split of ``fraction`` of the rows for evaluation.

    Unlike ``Dataset.train_test_split`` it keeps both parts in file order and remembers each row's index in the
    file, so errors and ``max_*_samples`` refer to rows as the user sees them.
    """
    total = len(train.rows)
    n_eval = math.ceil(total * fraction)
    if total - n_eval < 1:
        raise PipelineError(
            f"{train.source} has {total} row(s): too few to hold out eval_fraction={fraction} of them for evaluation; "
            "add rows or give eval_dataset_name"
        )
    order = np.random.default_rng(0).permutation(total)
    eval_rows, train_rows = np.sort(order[:n_eval]).tolist(), np.sort(order[n_eval:]).tolist()
    return (
        _Split(train.rows.select(train_rows), train.source, train_rows),
        _Split(train.rows.select(eval_rows), train.source, eval_rows),
    )


def _first(split: _Split, limit: int | None, option: str) -> _Split:
    if limit is None:
        return split
    if limit < 1:
        raise PipelineError(f"{option} must be at least 1, got {limit}")
    count = min(limit, len(split.rows))
    numbers = split.row_numbers[:count] if split.row_numbers is not None else None
    return _Split(split.rows.select(range(count)), split.source, numbers)


# ---------------------------------------------------------------------------------------------------------------
# Format detection
# ---------------------------------------------------------------------------------------------------------------


def detect_format(columns: list[str], example: dict, kind: str, source: str = "the dataset") -> str:
    """The format of rows with ``columns`` (``example`` is one row), checked against what ``kind`` accepts.

    ``kind`` is 'preference', 'sft' or 'prompt'. Raises :class:`PipelineError` listing the columns found and the
    accepted formats when the format is unknown or unusable for ``kind``.
    """
    if kind not in _ACCEPTED:
        raise ValueError(f"kind must be one of {', '.join(_ACCEPTED)}, got {kind!r}")
    found = _guess_format(set(columns), example)
    if found is None:
        raise PipelineError(
            f"cannot tell the format of {source} from its columns ({', '.join(columns)}). "
            f"{_accepted_help(kind)}. Rename columns with column_mapping, e.g. "
            '\'{"question": "prompt", "good": "chosen", "bad": "rejected"}\', or set dataset_format'
        )
    if found not in _ACCEPTED[kind]:
        raise PipelineError(
            f"{source} looks like '{found}' data (columns: {', '.join(columns)}), which cannot be used for "
            f"{_PURPOSE[kind]}. {_accepted_help(kind)}"
        )
    return found


def _guess_format(columns: set[str], example: dict) -> str | None:
    if {"info", "summaries", "choice"} <= columns:
        return "tldr"
    if {"history", "human_ref_A", "human_ref_B", "labels"} <= columns:
        return "shp"
    if {"chosen", "rejected"} <= columns:
        if "prompt" in columns:
            ultrafeedback = isinstance(example.get("prompt"), str) and _looks_like_messages(example.get("chosen"))
            return "ultrafeedback" if ultrafeedback else "preference"
        chosen = example.get("chosen")
        if isinstance(chosen, str) and "Human:" in chosen and _HH_ASSISTANT in chosen:
            return "hh_rlhf"
        return "implicit_preference"
    return next((fmt for fmt in (*SFT_FORMATS, PROMPT_FORMAT) if set(FORMAT_COLUMNS[fmt]) <= columns), None)


def _looks_like_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def _accepted_help(kind: str) -> str:
    formats = "; ".join(f"{fmt}: {_FORMAT_HELP[fmt]}" for fmt in _ACCEPTED[kind])
    return f"Accepted for {_PURPOSE[kind]} (dataset_format: columns): {formats}"


def _resolve_format(split: _Split, dataset_format: str, kind: str) -> str:
    columns = split.rows.column_names
    if dataset_format == "auto":
        return detect_format(columns, split.rows[0], kind, source=split.source)
    if dataset_format not in FORMAT_COLUMNS:
        raise PipelineError(
            f"unknown dataset_format '{dataset_format}'; use 'auto' or one of: {', '.join(FORMAT_COLUMNS)}"
        )
    if dataset_format not in _ACCEPTED[kind]:
        raise PipelineError(
            f"dataset_format '{dataset_format}' cannot be used for {_PURPOSE[kind]}. {_accepted_help(kind)}"
        )
    missing = [column for column in FORMAT_COLUMNS[dataset_format] if column not in columns]
    if missing:
        raise PipelineError(
            f"{split.source} lacks column(s) {', '.join(missing)} needed by dataset_format '{dataset_format}'; "
            f"its columns are: {', '.join(columns)}. Rename columns with column_mapping or set dataset_format: auto"
        )
    return dataset_format


# ---------------------------------------------------------------------------------------------------------------
# Row checks (a _RowError gets the source and row index added by _normalize)
# ---------------------------------------------------------------------------------------------------------------

Messages = list[dict[str, Any]]


class _RowError(Exception):
    def __init__(self, column: str, problem: str) -> None:
        super().__init__(column, problem)
        self.column = column
        self.problem = problem


def _text(row: dict, key: str, column: str | None = None) -> str:
    value = row.get(key)
    column = column or key
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _RowError(column, "is empty (null); every row needs a value here")
    if not isinstance(value, str):
        raise _RowError(column, f"should be text, found {type(value).__name__}")
    if not value.strip():
        raise _RowError(column, "is empty; every row needs a value here")
    return value


def _messages(row: dict, key: str) -> Messages:
    value = row.get(key)
    if value is None:
        raise _RowError(key, "is empty (null); every row needs a value here")
    if not isinstance(value, list) or not value:
        raise _RowError(key, "should be a non-empty list of {role, content} messages")
    for position, message in enumerate(value):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise _RowError(key, f"message {position} should be {{'role': ..., 'content': ...}} with text content")
    if not any(message["content"].strip() for message in value):
        raise _RowError(key, "has only empty messages")
    return value


def _text_or_messages(row: dict, key: str) -> str | Messages:
    return _messages(row, key) if isinstance(row.get(key), list) else _text(row, key)


def _same_kind(row: dict[str, str | Messages], columns: str) -> None:
    if len({isinstance(value, str) for value in row.values()}) > 1:
        raise _RowError(columns, "must all be text or all be message lists, not a mix")


def _reply(text: str, column: str) -> str:
    if not text.strip():
        raise _RowError(column, "has an empty reply")
    return text


# ---------------------------------------------------------------------------------------------------------------
# Preference formats -> prompt / chosen / rejected
# ---------------------------------------------------------------------------------------------------------------


def _explicit(row: dict) -> dict:
    pair = {key: _text_or_messages(row, key) for key in ("prompt", "chosen", "rejected")}
    _same_kind(pair, "prompt/chosen/rejected")
    return pair


def _implicit(row: dict) -> dict:
    chosen, rejected = _text_or_messages(row, "chosen"), _text_or_messages(row, "rejected")
    _same_kind({"chosen": chosen, "rejected": rejected}, "chosen/rejected")
    if isinstance(chosen, list):
        if len(chosen) < 2:
            raise _RowError("chosen", "has one message, so no prompt comes before the reply; add a 'prompt' column")
        if rejected[:-1] != chosen[:-1]:
            raise _RowError("rejected", "differs from chosen before the last message; both must share the prompt")
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
    # Own rule rather than trl.extract_prompt: cut at a word boundary (that one can cut inside a word, and
    # mis-splits identical pairs), so completions start with whitespace as they would when generated.
    shared = os.path.commonprefix([chosen, rejected])
    boundary = max((i for i, char in enumerate(shared) if char.isspace()), default=0)
    prompt = shared[:boundary].rstrip()
    if not prompt:
        raise _RowError("chosen", "shares no leading prompt text with rejected; give the prompt in a 'prompt' column")
    return {
        "prompt": prompt,
        "chosen": _reply(chosen[len(prompt) :], "chosen"),
        "rejected": _reply(rejected[len(prompt) :], "rejected"),
    }


def _after_last_assistant(text: str, column: str) -> int:
    position = text.rfind(_HH_ASSISTANT)
    if position < 0:
        raise _RowError(
            column, 'has no "\\n\\nAssistant:" turn; HH-RLHF dialogues read "\\n\\nHuman: ...\\n\\nAssistant: ..."'
        )
    return position + len(_HH_ASSISTANT)


def _hh_rlhf(row: dict) -> dict:
    chosen, rejected = _text(row, "chosen"), _text(row, "rejected")
    cut_chosen, cut_rejected = _after_last_assistant(chosen, "chosen"), _after_last_assistant(rejected, "rejected")
    # The prompt is taken from chosen; each reply is whatever follows its own last assistant marker.
    return {
        "prompt": chosen[:cut_chosen],
        "chosen": _reply(chosen[cut_chosen:], "chosen"),
        "rejected": _reply(rejected[cut_rejected:], "rejected"),
    }


def _ultrafeedback(row: dict) -> dict:
    prompt, chosen, rejected = _text(row, "prompt"), _messages(row, "chosen"), _messages(row, "rejected")
    for column, conversation in (("chosen", chosen), ("rejected", rejected)):
        if conversation[-1]["role"] != "assistant":
            raise _RowError(column, "should end with the assistant's reply")
    return {
        "prompt": chosen[:-1] or [{"role": "user", "content": prompt}],
        "chosen": chosen[-1:],
        "rejected": rejected[-1:],
    }


def _shp(row: dict) -> dict:
    history = _text(row, "history")
    answers = {1: _text(row, "human_ref_A"), 0: _text(row, "human_ref_B")}
    label = row.get("labels")
    if isinstance(label, bool) or label not in (0, 1):
        raise _RowError("labels", f"should be 1 (human_ref_A preferred) or 0 (human_ref_B preferred), found {label!r}")
    # Prompt and reply are joined by plain concatenation downstream, so the reply carries the separator.
    return {
        "prompt": history.rstrip(),
        "chosen": "\n\n" + answers[label].strip(),
        "rejected": "\n\n" + answers[1 - label].strip(),
    }


def _tldr(row: dict) -> dict:
    info, summaries, choice = row.get("info"), row.get("summaries"), row.get("choice")
    if not isinstance(info, dict):
        raise _RowError("info", "should be an object with post, title and subreddit")
    post = _text(info, "post", "info.post")
    title = _text(info, "title", "info.title")
    subreddit = _text(info, "subreddit", "info.subreddit")
    if not (isinstance(summaries, list) and len(summaries) == 2 and all(isinstance(s, dict) for s in summaries)):
        raise _RowError("summaries", "should be a list of two {text: ...} objects")
    if isinstance(choice, bool) or choice not in (0, 1):
        raise _RowError("choice", f"should be 0 or 1 (the preferred summary), found {choice!r}")
    texts = [_text(summary, "text", f"summaries[{i}].text").strip() for i, summary in enumerate(summaries)]
    return {
        "prompt": f"SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post.strip()}\nTL;DR:",
        "chosen": " " + texts[choice],
        "rejected": " " + texts[1 - choice],
    }


_PREFERENCE: dict[str, Callable[[dict], dict]] = {
    "preference": _explicit,
    "implicit_preference": _implicit,
    "hh_rlhf": _hh_rlhf,
    "ultrafeedback": _ultrafeedback,
    "shp": _shp,
    "tldr": _tldr,
}


def _margin(row: dict) -> float:
    value = row["margin"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise _RowError("margin", f"should be a number, found {value!r}")
    return float(value)


# ---------------------------------------------------------------------------------------------------------------
# SFT formats and prompts
# ---------------------------------------------------------------------------------------------------------------


def _prompt_completion(row: dict) -> dict:
    pair = {key: _text_or_messages(row, key) for key in ("prompt", "completion")}
    _same_kind(pair, "prompt/completion")
    return pair


_SFT: dict[str, Callable[[dict], dict]] = {
    "prompt_completion": _prompt_completion,
    "messages": lambda row: {"messages": _messages(row, "messages")},
    "text": lambda row: {"text": _text(row, "text")},
}


def _conversation_prompt(row: dict) -> Messages:
    """The messages before the final assistant reply (all of them if the last is not the assistant's)."""
    conversation = _messages(row, "messages")
    prompt = conversation[:-1] if conversation[-1]["role"] == "assistant" else conversation
    if not prompt:
        raise _RowError("messages", "has only the assistant's reply, no prompt")
    return prompt


def _prompt_source(fmt: str) -> Callable[[dict], str | Messages]:
    if fmt in _PREFERENCE:
        return lambda row: _PREFERENCE[fmt](row)["prompt"]
    return {
        PROMPT_FORMAT: lambda row: _text_or_messages(row, "prompt"),
        "prompt_completion": lambda row: _text_or_messages(row, "prompt"),
        "messages": _conversation_prompt,
        "text": lambda row: _text(row, "text"),
    }[fmt]


def _checked_prompt(prompt: str | Messages, tokenizer: PreTrainedTokenizerBase) -> str | Messages:
    if isinstance(prompt, list) and not tokenizer.chat_template:
        raise _RowError(
            "prompt",
            f"is a list of chat messages but the tokenizer '{tokenizer.name_or_path}' has no chat template; "
            "give prompts as text or use a tokenizer with a chat template",
        )
    return prompt


# ---------------------------------------------------------------------------------------------------------------
# Public loaders
# ---------------------------------------------------------------------------------------------------------------


def load_preference_data(args: DataArguments, keep_columns: Sequence[str] = ()) -> tuple[Dataset, Dataset]:
    """Train and eval rows in TRL's explicit preference format.

    Columns: prompt, chosen, rejected (all strings, or all lists of chat messages for conversational data), where
    the data has one a float 'margin', and those of ``keep_columns`` the data has, as stored; no other columns.
    """

    def rows_for(fmt: str) -> Callable[[dict], dict]:
        def normalize(row: dict) -> dict:
            pair = _PREFERENCE[fmt](row)
            if "margin" in row:
                pair["margin"] = _margin(row)
            return pair

        return normalize

    return _load_normalized(args, "preference", rows_for, keep_other_columns=False, keep_columns=keep_columns)


def load_sft_data(args: DataArguments) -> tuple[Dataset, Dataset]:
    """Train and eval rows in one of TRL's SFT formats: prompt/completion, messages, or text.

    Preference data is accepted too: its prompt and chosen reply become prompt/completion.
    """

    def rows_for(fmt: str) -> Callable[[dict], dict]:
        if fmt in _SFT:
            return _SFT[fmt]

        def from_preference(row: dict) -> dict:
            pair = _PREFERENCE[fmt](row)
            return {"prompt": pair["prompt"], "completion": pair["chosen"]}

        return from_preference

    return _load_normalized(args, "sft", rows_for, keep_other_columns=False)


def load_prompt_data(args: DataArguments, tokenizer: PreTrainedTokenizerBase) -> tuple[Dataset, Dataset]:
    """Train and eval rows with a 'prompt' column for RL: text, or chat messages (TRL's conversational format,
    which the trainer renders with the tokenizer's chat template; it must have one).

    Takes prompt-only rows, or the prompt part of any SFT or preference format. The columns the prompt was built
    from are replaced by 'prompt'; all other columns (e.g. labels for a task reward) are kept.
    """

    def rows_for(fmt: str) -> Callable[[dict], dict]:
        source = _prompt_source(fmt)
        return lambda row: {"prompt": _checked_prompt(source(row), tokenizer)}

    return _load_normalized(args, "prompt", rows_for, keep_other_columns=True)


def _load_normalized(
    args: DataArguments,
    kind: str,
    rows_for: Callable[[str], Callable[[dict], dict]],
    keep_other_columns: bool,
    keep_columns: Sequence[str] = (),
) -> tuple[Dataset, Dataset]:
    train, evaluation = _load_splits(args)
    normalized = []
    for split in (train, evaluation):
        fmt = _resolve_format(split, args.dataset_format, kind)
        logger.info("%s: %d rows in format '%s'", split.source, len(split.rows), fmt)
        columns = split.rows.column_names
        if keep_other_columns:
            consumed = set(FORMAT_COLUMNS[fmt]) | ({"margin"} if fmt in _PREFERENCE else set())
            remove = [column for column in columns if column in consumed]
        else:
            remove = [column for column in columns if column not in keep_columns]
        normalized.append(_normalize(split, rows_for(fmt), remove))
    return normalized[0], normalized[1]


def _normalize(split: _Split, normalize_row: Callable[[dict], dict], remove_columns: list[str]) -> Dataset:
    source, row_numbers = split.source, split.row_numbers

    def apply(row: dict, index: int) -> dict:
        try:
            return normalize_row(row)
        except _RowError as error:
            number = row_numbers[index] if row_numbers is not None else index
            raise PipelineError(f"{source}, row {number}, column '{error.column}' {error.problem}") from None

    rows = split.rows.map(apply, with_indices=True, remove_columns=remove_columns, desc=f"Normalizing {source}")
    # map keeps a rewritten column where it was; put ours first, in a fixed order
    ours = [column for column in _COLUMN_ORDER if column in rows.column_names]
    return rows.select_columns(ours + [column for column in rows.column_names if column not in ours])
