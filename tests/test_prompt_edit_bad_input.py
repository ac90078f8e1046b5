"""Bad input to the prompt-editing stage: empty pools, an initial verbalizer or exemplar the pools do not hold, an
exemplar pool without some class, fewer than one edit, an action set the policy's tokenizer cannot express. Each
stops with one "error: ..." line and exit code 2, before any model is loaded and before the stage folder appears."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import stages.prompt_edit.__main__ as edit_stage
from pipeline.errors import EXIT_USER_ERROR, run_main
from tests.conftest import REPO, subprocess_env
from tests.prompt_edit_testing import CONFIG, SENTIMENT, edit_argv, small_split

RUN = "bad"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("edit-bad")
    small_split("train.jsonl", 20, folder / "train.jsonl")
    small_split("test.jsonl", 4, folder / "test.jsonl")
    rows = [json.loads(line) for line in (SENTIMENT / "test.jsonl").read_text().splitlines()]
    negatives = [row for row in rows if row["label"] == "negative"]
    (folder / "negative_pool.jsonl").write_text("".join(json.dumps(row) + "\n" for row in negatives))
    (folder / "big_pool.jsonl").write_text((SENTIMENT / "test.jsonl").read_text())  # 400 examples: 1600+ actions
    config = yaml.safe_load(CONFIG.read_text())
    (folder / "no_phrases.yaml").write_text(yaml.safe_dump({**config, "instruction_pool": []}))
    # the pool files below do not hold the demo's initial exemplars: the first num_exemplars of the pool start
    without = {key: value for key, value in config.items() if key != "exemplars"}
    (folder / "pool_exemplars.yaml").write_text(yaml.safe_dump(without))
    return folder


CASES = {
    "empty instruction pool": ({"config": "no_phrases.yaml"}, ["instruction_pool is empty"]),
    "empty verbalizer candidates": (
        {"verbalizer_candidates": [" terrible| bad", ""]},
        ["verbalizer candidates of class 'positive'", "are empty"],
    ),
    "an empty verbalizer candidate": ({"verbalizer_candidates": [" terrible|", " great"]}, ["hold an empty one"]),
    "initial verbalizer not a candidate": (
        {"verbalizers": [" awful", " great"]},
        ["initial verbalizer ' awful' of class 'negative' is not among its candidates"],
    ),
    "empty exemplar pool": ({"exemplar_pool_size": 0}, ["the exemplar pool is empty"]),
    "exemplar pool without a class": (
        {"config": "pool_exemplars.yaml", "exemplar_pool": "negative_pool.jsonl"},
        ["the exemplar pool has no example of class(es) ['positive']"],
    ),
    "initial exemplar not in the data": ({"exemplars": ["No such review."]}, ["initial exemplar 'No such review.'"]),
    "no edits": ({"max_edits": 0}, ["max_edits must be at least 1 edit per query, got 0"]),
    "an action text that is not one token": (
        {"action_tokens": [" great", " greatly"]},
        ["action_tokens lists 2 token texts for"],
    ),
    "more actions than word tokens": (
        {"config": "pool_exemplars.yaml", "exemplar_pool": "big_pool.jsonl"},
        ["actions but the policy's vocabulary has only", "word tokens"],
    ),
    "a policy template without the query": ({"policy_template": "{prompt} Edits:"}, ["policy_template", "{input}"]),
}


def argv(inputs: Path, runs: Path, base: Path, options: dict) -> list[str]:
    options = dict(options)
    config = options.pop("config", None)
    for key in ("exemplar_pool",):
        if key in options:
            options[key] = inputs / options[key]
    arguments = edit_argv(
        runs, RUN, base, dataset_name=inputs / "train.jsonl", eval_dataset_name=inputs / "test.jsonl", **options
    )
    if config:
        arguments[1] = str(inputs / config)
    return arguments


def nothing_appeared(runs: Path) -> bool:
    return not runs.exists() or not any(runs.rglob("*"))


@pytest.mark.parametrize("name", CASES)
def test_bad_input_is_one_line_exit_code_2_and_nothing_left(name, inputs, tiny_base, tmp_path, capsys):
    options, says = CASES[name]
    runs = tmp_path / "runs"
    started = time.monotonic()
    with pytest.raises(SystemExit) as exited:
        run_main(edit_stage.main, argv(inputs, runs, tiny_base, options))
    assert exited.value.code == EXIT_USER_ERROR
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, errors
    for fragment in says:
        assert fragment in errors[0], errors[0]
    assert nothing_appeared(runs)
    assert time.monotonic() - started < 5, "it loaded models before checking its input"


def test_the_terminal_shows_one_error_line(inputs, tiny_base, tmp_path):
    command = [
        sys.executable,
        "-m",
        "stages.prompt_edit",
        *argv(inputs, tmp_path / "runs", tiny_base, {"max_edits": 0}),
    ]
    result = subprocess.run(command, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == EXIT_USER_ERROR, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "error: max_edits must be at least 1 edit per query, got 0"
    assert "Traceback" not in result.stderr
    assert nothing_appeared(tmp_path / "runs")
