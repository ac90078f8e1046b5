"""pipeline/runs.py: atomic JSON writes, content hashes, publishing a stage."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from pipeline import runs
from pipeline.runs import StageDir, content_hash, write_json_atomic


def circular() -> dict:
    payload: dict = {"step": 1}
    payload["self"] = payload
    return payload


def test_unserializable_payload_leaves_the_old_file_and_no_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"eval_loss": 1.5})
    with pytest.raises(ValueError, match="Circular reference"):
        write_json_atomic(path, circular())
    assert json.loads(path.read_text()) == {"eval_loss": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_unserializable_payload_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Circular reference"):
        write_json_atomic(tmp_path / "summary.json", circular())
    assert list(tmp_path.iterdir()) == []


def test_failed_rename_removes_the_temporary_file(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "summary.json"
    write_json_atomic(path, {"eval_loss": 1.5})

    def no_rename(source, target):
        raise OSError("disk went read-only")

    monkeypatch.setattr(runs.os, "replace", no_rename)
    with pytest.raises(OSError, match="read-only"):
        write_json_atomic(path, {"eval_loss": 0.5})
    assert json.loads(path.read_text()) == {"eval_loss": 1.5}
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]


def test_values_json_cannot_hold_are_written_as_text(tmp_path: Path) -> None:
    write_json_atomic(tmp_path / "manifest.json", {"path": Path("/data/x.jsonl")})
    assert json.loads((tmp_path / "manifest.json").read_text()) == {"path": "/data/x.jsonl"}


def test_file_hash_is_what_sha256sum_prints_and_folder_hash_sees_names(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "rows.jsonl").write_bytes(b'{"text": "hi"}\n')
    assert content_hash(tmp_path / "a" / "rows.jsonl") == hashlib.sha256(b'{"text": "hi"}\n').hexdigest()
    before = content_hash(tmp_path / "a")
    (tmp_path / "a" / "rows.jsonl").rename(tmp_path / "a" / "other.jsonl")
    assert content_hash(tmp_path / "a") != before


def test_manifest_leaves_out_unused_inputs_instead_of_hashing_the_current_folder(tmp_path, monkeypatch) -> None:
    data = tmp_path / "rows.jsonl"
    data.write_text("{}\n")
    monkeypatch.chdir(tmp_path)
    hashed = []
    monkeypatch.setattr(runs, "content_hash", lambda path: hashed.append(Path(path)) or "h")
    stage = StageDir(tmp_path, "demo", "ppo")
    stage.start()
    stage.write_manifest({}, {"dataset": data, "reward_model": "", "eval_dataset": None}, time.time())
    manifest = json.loads((stage.work / "manifest.json").read_text())
    assert manifest["inputs"] == {"dataset": {"path": str(data), "sha256": "h"}}
    assert hashed == [data]


def test_finish_replaces_the_previous_stage_whole(tmp_path: Path) -> None:
    stage = StageDir(tmp_path, "demo", "sft")
    (stage.start() / "old.txt").write_text("old")
    assert not stage.is_complete()
    stage.finish({"version": "old"}, time.time())
    (stage.start() / "new.txt").write_text("new")
    assert stage.is_complete()  # the old stage stays complete while the new one runs
    stage.finish({"version": "new"}, time.time())
    assert sorted(p.name for p in stage.final.iterdir()) == ["new.txt", "summary.json"]
    assert [p.name for p in stage.run_dir.iterdir()] == ["sft"]
