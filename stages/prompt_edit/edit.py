"""Apply a trained edit policy to new queries: the policy edits the run's initial prompt for each text (greedy
actions, as at test time in the stage) and the run's task model answers with the edited prompt.

``python -m stages.prompt_edit.edit --run demo --input reviews.jsonl [--output edited.jsonl]`` writes one row per
text (the text, the actions the policy took, how many of them changed the prompt, the final prompt, the predicted
class and, where the file has labels, the label) and prints the accuracy when labels are present.
"""

from __future__ import annotations

import json
from pathlib import Path

from accelerate import PartialState
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from pipeline.classification import accuracy_note, file_command_parser, read_queries
from pipeline.errors import PipelineError, run_main
from pipeline.runs import StageDir, read_json, write_text_atomic
from reward_models.task_models import load_task_model
from stages.ppo.sampling import stop_token_ids
from stages.prompt_edit.environment import EditSpace, PromptState
from stages.prompt_edit.policy import greedy_actions, policy_inputs
from stages.prompt_edit.reward import ActionTokens
from stages.prompt_edit.scoring import StateScorer

STAGE = "prompt_edit"
ENVIRONMENT = "environment.json"


def edit_and_classify(stage_dir: Path, texts: list[str], batch_size: int = 64) -> list[dict]:
    """For each text: the actions the run's policy takes, how many of them changed the prompt, the final prompt and
    the class the task model predicts."""
    saved = read_json(stage_dir / ENVIRONMENT)
    space, task, policy_args = EditSpace.from_dict(saved["space"]), saved["task"], saved["policy"]
    initial = PromptState(**{key: tuple(value) for key, value in saved["initial"].items()})
    device = PartialState().device
    task_model = load_task_model(
        task["task_model_path"],
        task["kind"],
        template=task["template"],
        device=device,
        batch_size=batch_size,
        temperature=task["temperature"],
    )
    scorer = StateScorer(task_model, task["template"], space.pool, task["separator"])
    tokenizer = AutoTokenizer.from_pretrained(stage_dir / "adapter")
    base = AutoModelForCausalLM.from_pretrained(policy_args["policy_model"])
    policy = PeftModel.from_pretrained(base, stage_dir / "adapter").to(device).eval()
    tokens = ActionTokens(policy_args["action_token_ids"], stop_token_ids(tokenizer, None, None))
    inputs = policy_inputs(policy_args["policy_template"], space.text(initial), texts)
    actions = greedy_actions(
        policy, tokenizer, inputs, tokens, policy_args["max_edits"], policy_args["max_prompt_length"], batch_size
    )
    finals = [space.replay(initial, episode)[-1] for episode in actions]
    predictions = scorer.logits(texts, finals).argmax(dim=-1).tolist()
    return [
        {
            "text": text,
            "edits": [space.describe(index) for index in episode],
            "changed_prompt": len(space.effective(initial, episode)),
            "final_prompt": space.render(final),
            "prediction": saved["classes"][prediction],
        }
        for text, episode, final, prediction in zip(texts, actions, finals, predictions, strict=True)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = file_command_parser(
        "python -m stages.prompt_edit.edit",
        __doc__.split("\n\n")[0],
        "default: <input name>.edited.jsonl in the stage folder",
    )
    args = parser.parse_args(argv)
    stage = StageDir(Path(args.runs_dir), args.run, STAGE)
    if not stage.is_complete():
        raise PipelineError(
            f"stage '{STAGE}' of run '{args.run}' is not complete: run `make prompt-edit RUN={args.run}`"
        )
    saved = read_json(stage.final / ENVIRONMENT)
    classes = saved["classes"]
    text_column = args.text_column or saved["task"]["text_column"]
    texts, labels = read_queries(args.input, text_column, args.label_column, classes)
    results = edit_and_classify(stage.final, texts)
    if labels is not None:
        for result, label in zip(results, labels, strict=True):
            result["label"] = classes[label]
    out = Path(args.output) if args.output else stage.final / f"{Path(args.input).stem}.edited.jsonl"
    write_text_atomic(out, "".join(json.dumps(result) + "\n" for result in results))
    accuracy = accuracy_note([result["prediction"] for result in results], labels, classes)
    edits = sum(result["changed_prompt"] for result in results) / max(len(results), 1)
    print(f"edited the prompt of {len(texts)} texts ({edits:.2f} edits each){accuracy}; wrote {out}")


if __name__ == "__main__":
    run_main(main)
