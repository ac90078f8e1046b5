"""The run report: ``runs/<run>/report.html``, one self-contained page a person opens in a browser.

Every image is embedded (base64 PNG), there is no script and nothing is fetched (the page's content security
policy allows images from ``data:`` only), and all text from the run folder is escaped. ``make report`` writes it
and every stage refreshes it when it finishes (:func:`refresh_report`, which never fails the stage).
"""

from __future__ import annotations

import base64
import html
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.report_content import Figure, Section, Table, run_sections, stage_command
from pipeline.runs import git_revision

REPORT = "report.html"
SCREENSHOT = "report.png"
STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 2px solid #ddd; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td { white-space: pre-wrap; max-width: 32em; }
caption { text-align: left; font-weight: 600; padding-bottom: 0.3em; }
.note { color: #666; font-size: 0.85em; } .absent { color: #999; }
figure { display: inline-block; margin: 0.5em 1em 0.5em 0; } figure img { max-width: 560px; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; } nav a { margin-right: 1em; }
details { margin: 0.5em 0 1em; } summary { cursor: pointer; color: #345; }
"""
# Nothing may be fetched: images come from data: URIs only, and there is no script.
CONTENT_SECURITY_POLICY = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def render_table(table: Table) -> str:
    head = "".join(f"<th>{escape(cell)}</th>" for cell in table.header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in table.rows)
    note = f'<tr><td class="note" colspan="{len(table.header)}">{escape(table.note)}</td></tr>' if table.note else ""
    return f"<table><caption>{escape(table.title)}</caption><tr>{head}</tr>{body}{note}</table>"


def render_figure(figure: Figure) -> str:
    data = base64.b64encode(Path(figure.path).read_bytes()).decode("ascii")
    caption = escape(figure.caption)
    return (
        f'<figure><img alt="{caption}" src="data:image/png;base64,{data}"><figcaption>{caption}</figcaption></figure>'
    )


def render_config(manifest: dict) -> str:
    """The manifest: when and how the stage ran, its inputs, and every configuration field, folded away."""
    if not manifest:
        return ""
    facts = [
        ["command", stage_command(manifest.get("command", []))],
        ["started", manifest.get("started", "")],
        ["finished", manifest.get("finished", "")],
        ["seconds", str(manifest.get("seconds", ""))],
        ["git revision", str(manifest.get("git_revision", ""))],
        ["versions", ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())],
    ]
    inputs = [
        [name, str(item.get("path", "")), str(item.get("sha256") or "")[:12]]
        for name, item in manifest.get("inputs", {}).items()
    ]
    parts = [render_table(Table("Run", ["", ""], facts))]
    if inputs:
        parts.append(render_table(Table("Inputs", ["input", "path", "sha256 (first 12)"], inputs)))
    for group, config in manifest.get("config", {}).items():
        rows = [[key, value if isinstance(value, str) else json.dumps(value)] for key, value in sorted(config.items())]
        parts.append(render_table(Table(f"{group} configuration", ["field", "value"], rows)))
    return f"<details><summary>Configuration (manifest.json)</summary>{''.join(parts)}</details>"


def render_section(section: Section) -> str:
    title = f'<h2 id="stage-{escape(section.name)}">{escape(section.name)}</h2>'
    description = f"<p>{escape(section.description)}</p>" if section.description else ""
    if not section.complete:
        return f'<section class="absent">{title}{description}<p>{escape(section.hint)}</p></section>'
    blocks = []
    for block in section.blocks:
        if isinstance(block, Table):
            blocks.append(render_table(block))
        elif isinstance(block, Figure):
            blocks.append(render_figure(block))
        else:
            blocks.append(f"<p>{escape(block)}</p>")
    return f"<section>{title}{description}{''.join(blocks)}{render_config(section.config)}</section>"


def build_report(runs_dir: Path, run: str) -> str:
    """The report of ``run`` as one HTML page."""
    sections = run_sections(Path(runs_dir), run)
    shown = [s for s in sections if s.complete]
    absent = [s for s in sections if not s.complete]
    navigation = "".join(f'<a href="#stage-{escape(s.name)}">{escape(s.name)}</a>' for s in shown)
    generated = time.strftime("%Y-%m-%d %H:%M:%S %z")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f'<meta http-equiv="Content-Security-Policy" content="{CONTENT_SECURITY_POLICY}">'
        f"<title>Run report: {escape(run)}</title><style>{STYLE}</style></head><body>"
        f"<h1>Run report: {escape(run)}</h1>"
        f'<p class="note">{escape(Path(runs_dir) / run)}; generated {escape(generated)} at git revision '
        f"{escape(git_revision() or 'unknown')} by <code>make report RUN={escape(run)}</code>. Complete stages: "
        f"{len(shown)}.</p><nav>{navigation}</nav>"
        + "".join(render_section(s) for s in shown)
        + "".join(render_section(s) for s in absent)
        + "</body></html>\n"
    )


def write_report(runs_dir: Path, run: str) -> Path:
    """Write ``runs/<run>/report.html`` (through a temporary file and a rename) and return its path."""
    text = build_report(runs_dir, run)
    path = Path(runs_dir) / run / REPORT
    temporary = path.with_name(f".{REPORT}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def refresh_report(runs_dir: str | Path, run: str) -> Path | None:
    """Rewrite the run's report after a stage finished; any failure is printed as a warning, never raised, so a
    report problem never fails the stage that called it."""
    try:
        return write_report(Path(runs_dir), run)
    except Exception as error:  # noqa: BLE001 (the stage's own results are already safe; say so and go on)
        print(
            f"warning: the run report was not refreshed ({type(error).__name__}: {error}); run `make report "
            f"RUN={run}` to see why"
        )
        return None
