"""The run folder: the contract between stages.

``runs/<run>/<stage>/`` holds ``model/`` (or ``adapter/``), ``manifest.json``, ``metrics.jsonl``,
``summary.json`` and ``plots/``. A stage works in ``runs/<run>/.<stage>.partial/`` and renames it into place
only after ``summary.json`` is written, so a stage is complete iff ``<stage>/summary.json`` exists.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

SUMMARY = "summary.json"
MANIFEST = "manifest.json"
METRICS = "metrics.jsonl"
TRACKED_PACKAGES = ("torch", "trl", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "tokenizers")
# Files larger than this are identified by name and size instead of a content hash (multi-GB weights).
HASH_SIZE_LIMIT = 200 * 1024 * 1024


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(payload, indent=2, default=str) + "\n")  # unserializable payloads fail here


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half a file.

    On any failure ``path`` keeps its old content (or stays absent) and no temporary file is left behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    """Read a JSON file, with an error naming it when it is missing or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as error:
        raise PipelineError(f"{path} does not exist") from error
    except json.JSONDecodeError as error:
        raise PipelineError(f"{path} is not valid JSON ({error}); delete it and rerun the stage") from error


def content_hash(path: Path) -> str:
    """sha256 of a file (what ``sha256sum`` prints), or of a folder's files (relative names and contents) in
    sorted order."""
    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for file in files:
        if file != path:
            digest.update(str(file.relative_to(path)).encode())
        size = file.stat().st_size
        if size > HASH_SIZE_LIMIT:
            digest.update(f"size={size}".encode())
            continue
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def git_revision() -> str | None:
    """The project's git revision (with ``-dirty`` when the tree has changes), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return revision + ("-dirty" if dirty else "")


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages that decide a run's results."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def check_run_name(run: str) -> None:
    """Refuse a run name that is not one plain folder name, so that every run stays directly under runs_dir."""
    if not run.strip():
        raise PipelineError("the run name is empty: give --run a name such as 'demo' or 'llama-lora'")
    if run in (".", "..") or "/" in run or "\\" in run:  # an absolute path holds a separator too
        raise PipelineError(
            f"run name '{run}' is not a plain folder name (no '/', '\\', '..' or absolute path): a run lives in "
            "runs_dir/<run>/; to keep runs somewhere else, set --runs_dir"
        )


@dataclass
class StageDir:
    """The output folder of one stage of one run."""

    runs_dir: Path
    run: str
    stage: str

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.run

    @property
    def final(self) -> Path:
        """Where the completed stage lives."""
        return self.run_dir / self.stage

    @property
    def work(self) -> Path:
        """Where the stage writes while it runs (checkpoints included)."""
        return self.run_dir / f".{self.stage}.partial"

    def is_complete(self) -> bool:
        return (self.final / SUMMARY).is_file()

    def start(self, resume: bool = False) -> Path:
        """Create (or, with ``resume``, keep) the work folder and return it."""
        if self.work.exists() and not resume:
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True, exist_ok=True)
        return self.work

    def write_manifest(self, configs: dict[str, Any], inputs: dict[str, str | Path | None], started: float) -> None:
        """Record the resolved config, the inputs with content hashes, versions and the git revision.

        An input given as None (or "", which ``Path`` would read as the current folder) is one the stage does not
        use: it is left out."""
        from pipeline.config import to_jsonable

        manifest = {
            "stage": self.stage,
            "run": self.run,
            "command": sys.argv,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
            "config": {name: to_jsonable(config) for name, config in configs.items()},
            "inputs": {
                name: {"path": str(path), "sha256": content_hash(Path(path)) if Path(path).exists() else None}
                for name, path in inputs.items()
                if path
            },
            "versions": package_versions(),
            "git_revision": git_revision(),
        }
        write_json_atomic(self.work / MANIFEST, manifest)

    def finish(self, summary: dict[str, Any], started: float) -> Path:
        """Write ``summary.json`` and move the work folder into place; returns the final folder."""
        manifest_path = self.work / MANIFEST
        if manifest_path.exists():
            manifest = read_json(manifest_path)
            manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            manifest["seconds"] = round(time.time() - started, 1)
            write_json_atomic(manifest_path, manifest)
        write_json_atomic(self.work / SUMMARY, summary)
        previous = self.run_dir / f".{self.stage}.previous"
        if self.final.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(self.final, previous)
        os.replace(self.work, self.final)
        if previous.exists():
            shutil.rmtree(previous)
        return self.final


def require_complete(runs_dir: str | Path, run: str, stage: str) -> Path:
    """Return the folder of a completed earlier stage, or stop naming the ``make`` target that produces it."""
    stage_dir = StageDir(Path(runs_dir), run, stage)
    if not stage_dir.is_complete():
        raise PipelineError(
            f"stage '{stage}' of run '{run}' is not complete ({stage_dir.final / SUMMARY} is missing): "
            f"run `make {stage} RUN={run}` first"
        )
    return stage_dir.final


def begin_stage(stage: StageDir, resume: bool = False) -> Path:
    """Prepare the stage's work folder on the main process, then let every process continue."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        stage.start(resume=resume)
    state.wait_for_everyone()
    return stage.work


def end_stage(stage: StageDir, summary: dict[str, Any], started: float) -> Path:
    """Publish the stage (main process writes ``summary.json`` and renames); every process waits for it."""
    from accelerate import PartialState

    state = PartialState()
    if state.is_main_process:
        stage.finish(summary, started)
    state.wait_for_everyone()
    return stage.final
