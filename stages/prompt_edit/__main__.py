"""Prompt-editing stage (TEMPERA): a LoRA policy edits a person's prompt for each query, rewarded per edit.

Run: ``accelerate launch -m stages.prompt_edit --config configs/<preset>/prompt_edit.yaml [--field value ...]``.
The policy reads the initial prompt and a training query and emits up to ``max_edits`` action tokens (instruction,
exemplar and verbalizer edits; EOS stops); each edit is rewarded by the change of the task model's score of the
query's label, on that edit's token, and PPO trains the policy on these dense rewards. At the end the policy edits
the prompt of every test query (greedy actions) and its accuracy is reported beside the baselines.
"""

from __future__ import annotations

import time
from pathlib import Path

from accelerate import PartialState
from datasets import Dataset
from transformers import set_seed

from pipeline.config import DataArguments, RunArguments, parse_config
from pipeline.errors import PipelineError, run_main
from pipeline.metrics import JsonlMetricsCallback, append_metrics, plot_curves, read_metrics
from pipeline.models import load_tokenizer, resolve_model_source
from pipeline.report import refresh_report
from pipeline.runs import METRICS, SUMMARY, StageDir, begin_stage, end_stage, read_json, write_json_atomic
from reward_models.task_models import DEFAULT_TEMPLATES, check_verbalizers, load_task_model, resolve_task_model
from stages.ppo.build import build_policy_and_value
from stages.ppo.checkpoints import check_resumable
from stages.ppo.config import PPOModelArguments
from stages.ppo.layout import decide_layout
from stages.ppo.modeling import POLICY_ADAPTER
from stages.ppo.sampling import stop_token_ids
from stages.prompt_edit.config import EditTaskArguments, InitialPromptArguments, PromptEditConfig
from stages.prompt_edit.evaluate import edit_rows, evaluate_edits
from stages.prompt_edit.policy import check_policy_template, policy_inputs
from stages.prompt_edit.reward import ActionTokens, EditReward
from stages.prompt_edit.scoring import StateScorer
from stages.prompt_edit.task import EditTask, build_edit_task
from stages.prompt_edit.tokens import action_token_ids
from stages.prompt_edit.trainer import PromptEditTrainer, query_rows

STAGE = "prompt_edit"
EDITS = "edits.jsonl"
ENVIRONMENT = "environment.json"
PLOTS = {
    "score_gain": ["objective/raw_scores"],
    "dev_accuracy": ["dev/accuracy"],
    "kl": ["objective/kl"],
    "edit_counts": ["edits/mean"],
    "edit_kinds": ["edits/instruction", "edits/exemplar", "edits/verbalizer", "edits/no_op"],
    "losses": ["loss/policy_avg", "loss/value_avg"],
    "time": ["time/generation", "time/forward", "time/reward", "time/update"],
}


def rlprompt_prompt(runs_dir: str, run: str, classes: list[str]) -> dict:
    """The prompt the run's prompt-optimization stage selected, with its verbalizers, or why there is none."""
    stage = StageDir(Path(runs_dir), run, "prompt_opt")
    if not stage.is_complete():
        return {
            "absent": f"{stage.final / SUMMARY} does not exist: run the prompt-optimization stage on this run "
            f"(python -m stages.prompt_opt --run {run} ...) to compare with RLPrompt"
        }
    summary = read_json(stage.final / SUMMARY)
    if summary["task"].get("classes", classes) != classes:
        return {"absent": f"{stage.final} classifies {summary['task']['classes']}, not {classes}"}
    return {
        "prompt": summary["selected_prompt"]["text"],
        "verbalizers": summary["task"]["verbalizers"],
        "source": str(stage.final),
        "test_accuracy_in_prompt_opt": summary.get("test_accuracy"),
    }


def environment_record(
    task: EditTask, task_args: EditTaskArguments, task_source: str, template: str, separator: str, **policy
) -> dict:
    """What the command that applies the policy needs to rebuild the environment (``environment.json``)."""
    return {
        "classes": task.class_names,
        "space": task.space.as_dict(),
        "initial": {
            "instruction": list(task.initial.instruction),
            "exemplars": list(task.initial.exemplars),
            "verbalizers": list(task.initial.verbalizers),
        },
        "task": {
            "task_model": task_args.task_model,
            "task_model_path": task_source,
            "kind": task_args.task_model_kind,
            "template": template,
            "temperature": task_args.task_temperature,
            "separator": separator,
            "text_column": task_args.text_column,
        },
        "policy": policy,
    }


def main(argv: list[str] | None = None) -> None:
    """Train the edit policy and write ``runs/<run>/prompt_edit/``."""
    run_args, data_args, task_args, prompt_args, args, model_args = parse_config(
        (RunArguments, DataArguments, EditTaskArguments, InitialPromptArguments, PromptEditConfig, PPOModelArguments),
        argv,
    )
    started = time.time()
    stage = StageDir(run_args.runs_dir, run_args.run, STAGE)
    check_resumable(stage, args.resume_from_checkpoint)
    if not model_args.use_peft:
        raise PipelineError("prompt editing trains a LoRA policy: set use_peft true")
    if args.stop_token is not None or args.stop_token_id is not None:
        raise PipelineError("stop_token: the edit policy stops with its EOS token; leave stop_token unset")
    check_policy_template(args.policy_template)
    policy_source = resolve_model_source(args.policy_model, "policy model")
    task_source = resolve_task_model(task_args.task_model)
    task = build_edit_task(data_args, task_args, prompt_args, seed=args.data_seed or args.seed)
    tokenizer = load_tokenizer(policy_source, model_args.tokenizer_pad_token)
    token_ids = action_token_ids(tokenizer, len(task.space), args.action_tokens)
    args.allowed_token_ids = token_ids
    template = task_args.template if task_args.template is not None else DEFAULT_TEMPLATES[task_args.task_model_kind]
    task_model = load_task_model(
        task_source,
        task_args.task_model_kind,
        template=template,
        verbalizers=list(task.initial.verbalizers),
        device=PartialState().device,
        dtype=task_args.task_dtype,
        batch_size=task_args.task_batch_size,
        temperature=task_args.task_temperature,
    )
    check_verbalizers(task_model.tokenizer, task_args.task_model_kind, [v for c in task.space.candidates for v in c])
    scorer = StateScorer(task_model, template, task.space.pool, prompt_args.exemplar_separator, args.score_cache_size)
    tokens = ActionTokens(token_ids, stop_token_ids(tokenizer, None, None))
    reward = EditReward(task.space, scorer, task.initial, tokens, args.gold_coef, args.other_coef)
    prompt_text = task.space.text(task.initial)
    rows = {
        name: query_rows(policy_inputs(args.policy_template, prompt_text, split.texts), split)
        for name, split in (("train", task.train), ("dev", task.dev), ("test", task.test))
    }

    work = begin_stage(stage, resume=bool(args.resume_from_checkpoint))
    args.output_dir, args.logging_dir = str(work), str(work / "logs")
    if PartialState().is_main_process and not args.resume_from_checkpoint:
        stage.write_manifest(
            {
                "run": run_args,
                "data": data_args,
                "task": task_args,
                "prompt": prompt_args,
                "prompt_edit": args,
                "model": model_args,
            },
            {
                "policy_model": policy_source,
                "task_model": task_source,
                "dataset": data_args.dataset_name,
                "exemplar_pool": prompt_args.exemplar_pool,
            },
            started,
        )
    set_seed(args.seed)  # LoRA and value-head initialization
    model = build_policy_and_value(
        policy_source, decide_layout(args, model_args), model_args, args, tokenizer.pad_token_id
    )
    trainer = PromptEditTrainer(
        args=args,
        model=model,
        tokenizer=tokenizer,
        prompts=Dataset.from_dict(rows["train"]),
        work_dir=work,
        callbacks=[JsonlMetricsCallback(work)],
        reward=reward,
        dev=rows["dev"],
        dev_every=args.dev_every,
    )
    last = trainer.train()
    test_actions = trainer.greedy_actions(rows["test"])
    train_actions = trainer.greedy_actions(rows["train"])

    summary: dict = {}
    if trainer.accelerator.is_main_process:
        figures = evaluate_edits(
            reward,
            task,
            test_actions,
            train_actions,
            args.random_edit_draws,
            args.seed,
            rlprompt_prompt(run_args.runs_dir, run_args.run, task.class_names),
        )
        for row in edit_rows(reward, task, test_actions, args.sample_queries):
            append_metrics(work / EDITS, row)
        trainer.unwrapped().policy.save_pretrained(work / "adapter", selected_adapters=[POLICY_ADAPTER])
        tokenizer.save_pretrained(work / "adapter")
        environment = environment_record(
            task,
            task_args,
            task_source,
            template,
            prompt_args.exemplar_separator,
            policy_model=policy_source,
            policy_template=args.policy_template,
            action_token_ids=token_ids,
            max_edits=args.max_edits,
            max_prompt_length=args.max_prompt_length,
            gold_coef=args.gold_coef,
            other_coef=args.other_coef,
        )
        write_json_atomic(work / ENVIRONMENT, environment)
        records = read_metrics(work / METRICS)
        plot_curves(records, work / "plots", PLOTS)
        summary = {
            **figures,
            "actions": len(task.space),
            "max_edits": args.max_edits,
            "score": {"gold_coef": args.gold_coef, "other_coef": args.other_coef},
            "task": environment["task"],
            "splits": {"train": len(task.train), "dev": len(task.dev), "test": len(task.test)},
            "updates": trainer.progress.update,
            "pairs_scored": scorer.pairs_scored,
            "seconds_per_update": {
                phase: sum(r.get(f"time/{phase}", 0) for r in records) / max(len(records), 1)
                for phase in ("generation", "forward", "reward", "update")
            },
            "last_update": last,
            "adapter": "adapter",
            "environment": ENVIRONMENT,
        }
    end_stage(stage, summary, started)
    if trainer.accelerator.is_main_process:
        base = summary["baselines"]
        rlprompt = base["rlprompt"].get("test_accuracy")
        print(
            f"prompt_edit: test accuracy {summary['test_accuracy']:.3f} with per-query edits; initial prompt "
            f"{base['initial_prompt']['test_accuracy']:.3f}, random edits "
            f"{base['random_edits']['test_accuracy_mean']:.3f}, RLPrompt's prompt "
            f"{'absent' if rlprompt is None else f'{rlprompt:.3f}'}; {summary['mean_edits']:.2f} edits per query; "
            f"wrote {stage.final}"
        )
        refresh_report(run_args.runs_dir, run_args.run)


if __name__ == "__main__":
    run_main(main)
