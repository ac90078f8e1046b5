"""Stage configuration: TRL / transformers dataclasses plus ours, read from YAML and the command line.

Every stage is configured the same way: ``--config configs/<preset>/<stage>.yaml`` sets defaults and any
``--field value`` on the command line overrides them (TRL's ``TrlParser``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
import yaml
from trl import ModelConfig, TrlParser

from pipeline.errors import PipelineError
from pipeline.runs import check_run_name


@dataclass
class RunArguments:
    """Where a stage reads its inputs from and writes its outputs to."""

    run: str = field(
        default="demo",
        metadata={"help": "Run name: the stage writes runs_dir/<run>/<stage>/ and reads earlier stages there."},
    )
    runs_dir: str = field(default="runs", metadata={"help": "Folder holding all runs."})

    def __post_init__(self) -> None:
        check_run_name(self.run)


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


class _Parser(TrlParser):
    """TRL's parser, with argparse's usage errors and ill-typed YAML values raised instead of printed."""

    def error(self, message: str) -> NoReturn:
        raise ValueError(message)  # parse_config makes it a PipelineError naming the config file

    def set_defaults_with_config(self, **kwargs: Any) -> list[str]:
        # argparse converts, and so checks, only string defaults: check YAML numbers, booleans and lists the same
        # way (mappings are left to the dataclasses, argparse has no type for them).
        for action in self._actions:
            value = kwargs.get(action.dest)
            if action.type is None or value is None or isinstance(value, (str, dict)):
                continue
            for item in value if isinstance(value, list) and action.nargs else [value]:
                try:
                    action.type(str(item))
                except (ValueError, TypeError, argparse.ArgumentTypeError) as error:
                    raise ValueError(f"{action.dest}: {value!r} is not a valid value ({error})") from None
        return super().set_defaults_with_config(**kwargs)


def parse_config(dataclass_types: tuple[type, ...], argv: list[str] | None = None) -> tuple[Any, ...]:
    """Parse ``--config file.yaml`` plus command-line overrides (``argv``, default ``sys.argv[1:]``) into
    instances of ``dataclass_types``.

    Invalid values become a :class:`PipelineError` naming the config file.
    """
    _use_cpu_without_accelerator()
    argv = list(argv) if argv is not None else sys.argv[1:]
    config_file = argv[argv.index("--config") + 1] if "--config" in argv[:-1] else None
    source = f"{config_file} or on the command line" if config_file else "the command line"
    try:
        *configs, unknown_in_file, unknown_on_line = _Parser(dataclass_types).parse_args_and_config(
            args=argv, return_remaining_strings=True, separate_remaining_strings=True
        )
    except FileNotFoundError as error:
        raise PipelineError(f"config file not found: {error.filename}") from error
    except yaml.YAMLError as error:
        raise PipelineError(f"{config_file} is not valid YAML: {' '.join(str(error).split())}") from error
    except (ValueError, TypeError) as error:
        raise PipelineError(f"invalid configuration in {source}: {error}") from error
    unknown = {
        f"in {config_file}": [name.removeprefix("--") for name in unknown_in_file[::2]],
        "on the command line": [arg for arg in unknown_on_line if arg.startswith("-")] or unknown_on_line,
    }
    for where, names in unknown.items():
        if names:
            raise PipelineError(
                f"unknown setting(s) {where}: {', '.join(names)}; check the spelling (--help lists the settings)"
            )
    return tuple(configs)


def _use_cpu_without_accelerator() -> None:
    """Make a multi-process launch on a machine without GPUs one job on CPU (gloo), not independent copies.

    ``accelerate launch --multi_gpu`` there starts processes that each set up as the only process and race over
    the same run folder; accelerate and transformers read ``ACCELERATE_USE_CPU`` and join them with gloo instead.
    Runs before the training arguments are built, which is when the process group is set up.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.accelerator.is_available():
        os.environ["ACCELERATE_USE_CPU"] = "true"


def to_jsonable(config: Any) -> dict[str, Any]:
    """A dataclass config as plain JSON values (for manifests)."""
    if hasattr(config, "to_dict"):
        return json.loads(json.dumps(config.to_dict(), default=str))
    return json.loads(json.dumps(vars(config), default=str))
