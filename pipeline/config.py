"""Stage configuration: TRL / transformers dataclasses plus ours, read from YAML and the command line.

Every stage is configured the same way: ``--config configs/<preset>/<stage>.yaml`` sets defaults and any
``--field value`` on the command line overrides them (TRL's ``TrlParser``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

from trl import ModelConfig, TrlParser

from pipeline.errors import PipelineError

T = TypeVar("T")


@dataclass
class RunArguments:
    """Where a stage reads its inputs from and writes its outputs to."""

    run: str = field(
        default="demo",
        metadata={"help": "Run name: the stage writes runs_dir/<run>/<stage>/ and reads earlier stages there."},
    )
    runs_dir: str = field(default="runs", metadata={"help": "Folder holding all runs."})


@dataclass
class DataArguments:
    """Which dataset a stage trains and evaluates on, and how to read it."""

    dataset_name: str | None = field(
        default=None,
        metadata={"help": "Hub dataset id, or a local file (.jsonl/.json/.csv/.parquet) or folder of such files."},
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Hub dataset configuration (subset) name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split used for training."})
    dataset_test_split: str = field(default="test", metadata={"help": "Split used for evaluation, if it exists."})
    eval_dataset_name: str | None = field(
        default=None,
        metadata={"help": "A separate local file or hub id for evaluation (takes precedence over the test split)."},
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"help": "Fraction of the training data held out for evaluation when no evaluation split exists."},
    )
    dataset_format: str = field(
        default="auto",
        metadata={
            "help": "Format of the rows: 'auto' detects it. See pipeline/datasets.py for the names "
            "(e.g. 'hh_rlhf', 'ultrafeedback', 'shp', 'tldr', 'preference', 'prompt_completion', 'messages', 'text')."
        },
    )
    column_mapping: dict[str, str] | str | None = field(
        default=None,
        metadata={
            "help": "Rename columns before format detection, as JSON or a YAML mapping from the dataset's column to "
            'ours, e.g. \'{"question": "prompt", "good": "chosen", "bad": "rejected"}\'.'
        },
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use at most this many training rows."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use at most this many evaluation rows."})

    def __post_init__(self) -> None:
        if isinstance(self.column_mapping, str):
            try:
                self.column_mapping = json.loads(self.column_mapping)
            except json.JSONDecodeError as error:
                raise PipelineError(
                    f'column_mapping is not valid JSON ({error}); write it like \'{{"their_column": "prompt"}}\''
                ) from error
        if not 0.0 < self.eval_fraction < 1.0:
            raise PipelineError(f"eval_fraction must be between 0 and 1, got {self.eval_fraction}")


@dataclass
class ModelArguments(ModelConfig):
    """TRL's model options (LoRA, 4/8-bit) plus the tokenizer's padding."""

    tokenizer_pad_token: str | None = field(
        default=None,
        metadata={
            "help": "Padding token to use when the tokenizer has none. It must already be in the vocabulary and "
            "differ from EOS (with pad == EOS the policy never learns to stop)."
        },
    )


def parse_config(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse ``--config file.yaml`` plus command-line overrides into instances of ``dataclass_types``.

    Invalid values become a :class:`PipelineError` naming the config file.
    """
    argv = list(argv) if argv is not None else None
    source = "the command line"
    if argv is not None and "--config" in argv:
        source = argv[argv.index("--config") + 1]
    try:
        return TrlParser(dataclass_types).parse_args_and_config(args=argv)
    except FileNotFoundError as error:
        raise PipelineError(f"config file not found: {error.filename}") from error
    except (ValueError, TypeError) as error:
        raise PipelineError(f"invalid configuration in {source}: {error}") from error


def to_jsonable(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON values (for manifests)."""
    if hasattr(config, "to_dict"):
        return json.loads(json.dumps(config.to_dict(), default=str))
    return json.loads(json.dumps(vars(config), default=str))
