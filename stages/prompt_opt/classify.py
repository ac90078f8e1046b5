"""Classify a file with a learned prompt: the task model of a prompt-optimization run, its template and verbalizers,
and the prompt it selected (or one given on the command line).

``python -m stages.prompt_opt.classify --run demo --input reviews.jsonl [--prompt TEXT] [--output preds.jsonl]``
writes one prediction per row (the text, the predicted class and, where the file has labels, the label) and prints
the accuracy when labels are present.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import PartialState

from pipeline.classification import accuracy_note, file_command_parser, read_queries
from pipeline.errors import PipelineError, run_main
from pipeline.runs import SUMMARY, StageDir, read_json, write_text_atomic
from reward_models.task_models import load_task_model

STAGE = "prompt_opt"


def classify(summary: dict, texts: list[str], prompt: str, batch_size: int = 64) -> list[str]:
    """The class name the run's task model predicts for each text with ``prompt`` in its template."""
    task = summary["task"]
    model = load_task_model(
        task["task_model_path"],
        task["kind"],
        template=task["template"],
        verbalizers=task["verbalizers"],
        device=PartialState().device,
        batch_size=batch_size,
    )
    logits = model.class_logits(model.fill(task["template"], texts, prompt), task["verbalizers"])
    return [task["classes"][index] for index in logits.argmax(dim=-1).tolist()]


def main(argv: list[str] | None = None) -> None:
    parser = file_command_parser(
        "python -m stages.prompt_opt.classify",
        __doc__.split("\n\n")[0],
        "default: <input name>.predictions.jsonl beside the run",
    )
    parser.add_argument("--prompt", default=None, help="default: the prompt the run selected")
    args = parser.parse_args(argv)
    stage = StageDir(Path(args.runs_dir), args.run, STAGE)
    if not stage.is_complete():
        raise PipelineError(
            f"stage '{STAGE}' of run '{args.run}' is not complete: run `make prompt-opt RUN={args.run}`"
        )
    summary = read_json(stage.final / SUMMARY)
    classes = summary["task"]["classes"]
    text_column = args.text_column or summary["task"].get("text_column", "text")
    texts, labels = read_queries(args.input, text_column, args.label_column, classes)
    prompt = summary["selected_prompt"]["text"] if args.prompt is None else args.prompt
    predictions = classify(summary, texts, prompt)
    out = Path(args.output) if args.output else stage.final / f"{Path(args.input).stem}.predictions.jsonl"
    lines = [
        json.dumps({"text": text, "prediction": prediction, **({"label": classes[labels[i]]} if labels else {})})
        for i, (text, prediction) in enumerate(zip(texts, predictions, strict=True))
    ]
    write_text_atomic(out, "".join(line + "\n" for line in lines))
    accuracy = accuracy_note(predictions, labels, classes)
    print(f"classified {len(texts)} texts with prompt {prompt!r}{accuracy}; wrote {out}")


if __name__ == "__main__":
    run_main(main)
