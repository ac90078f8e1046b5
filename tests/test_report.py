"""The run report: one section per stage folder with its tables and every plot embedded, all text escaped, nothing
fetched; refreshed by the stages without ever failing them; and seen in headless Chromium as a person sees it."""

from __future__ import annotations

import base64
import json
import os
import re
from pathlib import Path

import pytest
from PIL import Image

from pipeline import cli
from pipeline.browser import INSTALL_HINT, find_chromium, open_page
from pipeline.report import REPORT, build_report, refresh_report, write_report
from pipeline.results import write_results

HOSTILE = "<script>alert('x')</script> & \"quoted\""


def png(path: Path, color: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (60, 40), color).save(path)


def stage(run_dir: Path, name: str, summary: dict, plots: tuple[str, ...] = (), **files: list[dict]) -> None:
    folder = run_dir / name
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps(summary))
    manifest = {"stage": name, "command": [f"/repo/stages/{name}.py", "--run", "r"], "config": {name: {"seed": 0}}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    for index, plot in enumerate(plots):
        png(folder / "plots" / f"{plot}.png", ("red", "green", "blue")[index % 3])
    for file, rows in files.items():
        (folder / f"{file}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))


DUEL = {"win_rate": 0.75, "ci": [0.6, 0.9], "wins": 3, "ties": 0, "losses": 1, "n": 4, "confidence": 0.95}
DESCRIBED = {"mean": 0.5, "std": 0.1, "stderr": 0.05, "n": 4}


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """A run folder with every kind of stage the report knows, an unknown one, and hostile text."""
    run_dir = tmp_path / "runs" / "r"
    stage(run_dir, "sft", {"initial_eval_loss": 7.5, "eval_loss": 1.5, "eval_perplexity": 4.5}, ("loss",))
    calibration = {"bins": [{"low": 0.5, "high": 0.55, "count": 3, "mean_confidence": 0.52, "accuracy": 0.67}]}
    diagnostics = {
        "pairs": 10,
        "accuracy": 0.8,
        "accuracy_ci95": [0.49, 0.94],
        "calibration": {**calibration, "ece": 0.07},
        "accuracy_by_predicted_margin": [{"low": 0.0, "high": 1.0, "count": 10, "accuracy": 0.8}],
    }
    rm = {"eval_accuracy": 0.8, "eval_accuracy_ci95": [0.49, 0.94], "diagnostics": diagnostics, "warnings": []}
    stage(run_dir, "rm", rm, ("calibration", "reward_distribution"))
    evaluation = {
        "num_prompts": 4,
        "policy": {"score": 1.9, "score_stderr": 0.03, "kl": 6.5, "kl_stderr": 0.2},
        "reference": {"score": -0.1, "score_stderr": 0.08},
    }
    sample = {"update": 40, "prompt": "How was it?", "completion": HOSTILE, "score": 1.2, "gold_score": 0.5}
    ppo = {"score": 1.9, "reference_score": -0.1, "kl": 6.5, "updates": 40, "evaluation": evaluation, "lora": True}
    stage(run_dir, "ppo", ppo, ("score", "kl"), samples=[sample])
    policies = {
        "sft": {"scores": {"rm": DESCRIBED, "vader": DESCRIBED}, "length": DESCRIBED, "eos_rate": 1.0},
        "ppo": {
            "scores": {"rm": DESCRIBED, "vader": DESCRIBED},
            "length": DESCRIBED,
            "eos_rate": 0.9,
            "kl": DESCRIBED,
            "win_rate": {"rm": DUEL, "vader": DUEL},
        },
    }
    point = {"update": 10, "kl": 4.0, "sqrt_kl": 2.0, "proxy": 1.0, "proxy_stderr": 0.1, "gold": 0.7}
    curve = {
        "proxy": "rm",
        "gold": "vader",
        "points": [point | {"gold_stderr": 0.02}],
        "start": {"kl": 0.0, "sqrt_kl": 0.0, "proxy": 0.0, "gold": 0.0},
        "best_gold_update": 10,
        "best_gold": 0.7,
        "best_gold_sqrt_kl": 2.0,
        "gold_drop_after_peak": 0.0,
        "gold_turned_down": False,
        "proxy_rose_after_gold_peak": False,
        "prompts": 4,
    }
    eval_summary = {
        "compared_policy": "ppo",
        "reference_policy": "sft",
        "gold_win_rate": 0.75,
        "gold_win_rate_ci": [0.6, 0.9],
        "reference": "sft",
        "scorers": {"rm": "proxy", "vader": "gold"},
        "confidence": 0.95,
        "num_prompts": 4,
        "sampling": {"temperature": 0.7, "response_length": 32},
        "decodings": {"sampled": {"policies": policies}, "greedy": {"policies": policies}},
        "overoptimization": curve,
    }
    row = {
        "decoding": "sampled",
        "prompt": "Review the cafe:",
        "completions": {"sft": "Fine.", "ppo": HOSTILE},
        "scores": {"sft": {"rm": 0.1, "vader": 0.2}, "ppo": {"rm": 0.9, "vader": 0.8}},
    }
    stage(run_dir, "eval", eval_summary, ("win_rates", "overoptimization"), samples=[row])
    selected = {"text": " great movie", "token_ids": [1, 2], "train_reward": 3.0, "dev_accuracy": 0.8}
    baselines = {
        "empty_prompt": {"prompt": "", "test_accuracy": 0.5},
        "manual_prompt": {"prompt": " It was", "test_accuracy": 0.6},
        "random_prompts": {"count": 20, "test_accuracy_mean": 0.55, "test_accuracy_std": 0.05},
        "best_random_on_dev": {"prompt": " blue sky", "dev_accuracy": 0.6, "test_accuracy": 0.58},
    }
    task = {"task_model": "m", "task_model_path": "/m", "kind": "embedding", "template": "{prompt} {input}",
            "verbalizers": [" terrible", " great"], "classes": ["neg", "pos"]}  # fmt: skip
    prompt_opt = {"algorithm": "ppo", "selected_prompt": selected | {"test_accuracy": 0.83}, "test_accuracy": 0.83,
                  "baselines": baselines, "task": task}  # fmt: skip
    stage(run_dir, "prompt_opt", prompt_opt, ("reward", "dev_accuracy"), prompts=[selected | {"times_sampled": 4}])
    edit = {"query": HOSTILE, "initial_prompt": "Classify:", "final_prompt": "Classify carefully:",
            "edits": [{"action": "add 'carefully'", "prompt_after": "Classify carefully:", "score_after": 0.4},
                      {"action": "add 'carefully'", "changed": False, "prompt_after": "Classify carefully:",
                       "score_after": 0.4}],
            "prediction": "pos", "label": "pos"}  # fmt: skip
    edit_baselines = {
        "initial_prompt": {"prompt": "Classify:", "test_accuracy": 0.6},
        "random_edits": {"description": "as many random edits", "test_accuracy_mean": 0.58, "test_accuracy_std": 0.01},
        "rlprompt": {"absent": "no prompt_opt stage"},
    }
    prompt_edit = {
        "test_accuracy": 0.9,
        "mean_edits": 1.5,
        "baselines": edit_baselines,
        "edit_kinds": {"instruction": 1.0, "exemplar": 0.0, "verbalizer": 0.0},
        "sequences": {"distinct": 3, "most_common": ["add 'carefully'"], "most_common_share": 0.5},
    }
    stage(run_dir, "prompt_edit", prompt_edit, (), edits=[edit])  # fmt: skip
    stage(run_dir, "dpo", {"eval_loss": 0.42, "note": HOSTILE}, ("loss",))
    return run_dir


def pngs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("*/plots/*.png"))


def test_every_stage_has_a_section_with_its_tables_and_plots(run: Path):
    page = build_report(run.parent, "r")
    sections = re.findall(r'<h2 id="stage-([a-z_]+)">', page)
    assert sections == ["sft", "rm", "ppo", "eval", "prompt_opt", "prompt_edit", "dpo"]  # known order, then others
    for text in (
        "eval_loss",  # headline figures
        "Calibration: confidence in the favoured completion",  # RM diagnostics
        "Held-out comparison on 4 prompts",  # PPO
        "0.750 [0.600, 0.900]",  # a win rate with its interval
        "Over-optimization: one point per PPO snapshot",
        "did not turn down after it",
        "Test accuracy against the baselines",  # prompt stages
        "20 random prompts",
        "Sample edits of test queries",
        "add &#x27;carefully&#x27; -&gt; 0.4",
        "add &#x27;carefully&#x27; (no change) -&gt; 0.4",  # an action that changed nothing says so
        "as many random edits",  # the random-edits baseline by its description
        "absent: no prompt_opt stage",
        "Edits the policy chose",
        "3 distinct edit sequences over the test queries",
        "Configuration (manifest.json)",
    ):
        assert text in page, text


def test_images_are_embedded_and_nothing_is_fetched(run: Path):
    page = build_report(run.parent, "r")
    sources = re.findall(r'<img alt="[^"]*" src="([^"]+)"', page)
    assert len(sources) == len(pngs(run)) == 10
    embedded = sorted(base64.b64decode(src.removeprefix("data:image/png;base64,")) for src in sources)
    assert embedded == sorted(path.read_bytes() for path in pngs(run))
    assert all(src.startswith("data:image/png;base64,") for src in sources)
    # No script, and the only links are to the page's own sections.
    assert "<script" not in page and "<link" not in page
    assert set(re.findall(r'href="([^"]*)"', page)) <= {
        f"#stage-{name}" for name in re.findall(r'id="stage-(\w+)"', page)
    }
    assert "default-src 'none'; img-src data:" in page


def test_text_from_the_run_folder_is_escaped(run: Path):
    page = build_report(run.parent, "r")
    assert HOSTILE not in page and "<script>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &quot;quoted&quot;" in page


def test_absent_and_unreadable_stages_do_not_break_the_report(tmp_path: Path, run: Path):
    (run / "rm" / "summary.json").write_text("{not json")
    (run / "prompt_edit" / "summary.json").unlink()
    page = build_report(run.parent, "r")
    assert "Part of this stage&#x27;s files could not be read" in page
    assert "not run: `python -m stages.prompt_edit`" in page
    empty = tmp_path / "runs" / "empty"
    empty.mkdir()
    assert "not run: `make ppo RUN=empty`" in build_report(tmp_path / "runs", "empty")


def test_refresh_report_never_fails_the_stage(run: Path, monkeypatch, capsys):
    assert refresh_report(run.parent, "r") == run / REPORT and (run / REPORT).is_file()

    def broken(*args):
        raise RuntimeError("disk full")

    monkeypatch.setattr("pipeline.report.build_report", broken)
    assert refresh_report(run.parent, "r") is None
    assert "warning: the run report was not refreshed (RuntimeError: disk full)" in capsys.readouterr().out


def test_rlhf_report_prints_the_figures_and_writes_the_page(run: Path, capsys):
    cli.main(["report", "--runs_dir", str(run.parent), "--run", "r"])
    out = capsys.readouterr().out
    assert (
        "eval compared_policy ppo, reference_policy sft, gold_win_rate 0.75, gold_win_rate_ci [0.6, 0.9]" in out
        and f"wrote {run / REPORT}" in out
    )


def test_results_page_names_the_commands_and_copies_the_key_plots(run: Path, tmp_path: Path):
    page = write_results(run.parent, "r", tmp_path / "docs" / "RESULTS.md").read_text()
    assert "Produced by `python -m stages.eval --run r`" in page
    assert "| ppo | 0.500 ± 0.100 | 0.500 ± 0.100 | 0.750 [0.600, 0.900]" in page
    assert "![eval: overoptimization](results/r-eval-overoptimization.png)" in page
    assert (tmp_path / "docs" / "results" / "r-eval-overoptimization.png").is_file()
    assert not (tmp_path / "docs" / "results" / "r-eval-time.png").exists()


def test_report_in_headless_chromium(run: Path):
    """What a person sees: the page's text, every image loaded, no request beyond the file and its data: images; a
    screenshot is kept in the run folder."""
    if find_chromium() is None:
        message = f"Chromium is not installed: {INSTALL_HINT} to run this check"
        if os.environ.get("REQUIRE_CHROMIUM"):
            pytest.fail(message)
        pytest.skip(message)
    path = write_report(run.parent, "r")
    page = open_page(path, run / "report.png")

    assert page.title == "Run report: r"
    for text in ("Headline figures", "Over-optimization: one point per PPO snapshot", HOSTILE, "20 random prompts"):
        assert text in page.text, text
    assert len(page.images) == len(pngs(run)) and page.broken_images == []
    assert all(image["width"] == 60 and image["height"] == 40 for image in page.images)
    assert {url.split(":", 1)[0] for url in page.requests} <= {"file", "data"}
    with Image.open(run / "report.png") as shot:
        assert shot.width >= 1000 and shot.height > 2000
