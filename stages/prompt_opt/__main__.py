"""Prompt-optimization stage (RLPrompt): a LoRA policy learns a short discrete prompt for a frozen task model.

Run: ``accelerate launch -m stages.prompt_opt --config configs/<preset>/prompt_opt.yaml [--field value ...]``.
The policy reads a constant input and writes ``prompt_length`` tokens; the task model classifies the few-shot
train examples with the prompt in its template; the prompt's reward (RLPrompt's gap reward by default), z-scored
over the step's prompts on all processes, trains the policy with PPO or soft Q-learning. The prompt selected on the
dev split is reported on the test split beside the baselines (empty, manual and random prompts).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import PreTrainedTokenizerBase, set_seed

from pipeline.classification import ClassificationData, load_classification_data
from pipeline.config import DataArguments, RunArguments, parse_config
from pipeline.errors import PipelineError, run_main
from pipeline.metrics import JsonlMetricsCallback, append_metrics, plot_curves, read_metrics
from pipeline.models import load_causal_lm, load_tokenizer, resolve_model_source
from pipeline.report import refresh_report
from pipeline.runs import METRICS, StageDir, begin_stage, end_stage
from reward_models.prompt_task import PromptTaskReward
from reward_models.task_models import load_task_model, resolve_task_model
from stages.ppo.build import build_policy_and_value, with_lora
from stages.ppo.checkpoints import check_resumable
from stages.ppo.config import PPOModelArguments
from stages.ppo.layout import decide_layout
from stages.ppo.modeling import POLICY_ADAPTER
from stages.prompt_opt.config import PromptOptConfig, PromptTaskArguments
from stages.prompt_opt.search import PromptSearch
from stages.prompt_opt.sql import PolicyAndTarget
from stages.prompt_opt.trainer import PromptOptTrainer, SQLPromptTrainer

STAGE = "prompt_opt"
PROMPTS = "prompts.jsonl"
PLOTS = {
    "reward": ["objective/raw_scores"],
    "dev_accuracy": ["dev/accuracy"],
    "kl": ["objective/kl"],
    "losses": ["loss/policy_avg", "loss/value_avg", "loss/sql"],
    "time": ["time/generation", "time/forward", "time/reward", "time/update"],
}


def allowed_token_ids(tokenizer: PreTrainedTokenizerBase, spec: str | None) -> list[int] | None:
    """The token ids a prompt may use: 'words' (a space then letters: readable prompts), a file of token texts
    (one per line, each encoding to one token), or None (any token)."""
    if spec is None:
        return None
    if spec == "words":
        words = [
            i for t, i in tokenizer.get_vocab().items() if tokenizer.decode([i]).startswith(" ") and t[1:].isalpha()
        ]
        return sorted(words)
    try:
        lines = [line for line in Path(spec).read_text(encoding="utf-8").splitlines() if line]
    except OSError as error:
        raise PipelineError(f"allowed_tokens: cannot read '{spec}' ({error}); give 'words' or a file") from error
    ids = []
    for number, text in enumerate(lines, start=1):
        encoded = tokenizer.encode(text, add_special_tokens=False)
        if len(encoded) != 1:
            raise PipelineError(
                f"allowed_tokens '{spec}', line {number}: {text!r} is {len(encoded)} tokens for the policy's "
                "tokenizer, not one; list single tokens (mind the leading space of BPE vocabularies)"
            )
        ids.append(encoded[0])
    return sorted(set(ids))


def random_prompts(tokenizer: PreTrainedTokenizerBase, allowed: list[int] | None, length: int, count: int, seed: int):
    """``count`` prompts of ``length`` tokens drawn uniformly from the allowed tokens (default: every token that is
    not special), decoded as the policy's prompts are."""
    pool = allowed or [i for i in range(len(tokenizer)) if i not in set(tokenizer.all_special_ids)]
    generator = torch.Generator().manual_seed(seed)
    draws = torch.randint(len(pool), (count, length), generator=generator)
    return [tokenizer.decode([pool[i] for i in row], skip_special_tokens=True) for row in draws.tolist()]


def build_policy(policy_source: str, args: PromptOptConfig, model_args: PPOModelArguments, pad_token_id: int):
    """PPO: the policy with a value adapter and head on its base (engine layout); SQL: the policy and its target."""
    if not model_args.use_peft:
        raise PipelineError("prompt optimization trains a LoRA policy: set use_peft true")
    if args.algorithm == "sql":
        policy = with_lora(load_causal_lm(policy_source, model_args), model_args, "CAUSAL_LM", False)
        return PolicyAndTarget(policy)
    return build_policy_and_value(policy_source, decide_layout(args, model_args), model_args, args, pad_token_id)


def baselines(task: PromptTaskReward, data: ClassificationData, manual: str, randoms: list[str]) -> dict:
    """Test accuracy of the empty and manual prompts and of random prompts (their mean and spread, and the one best
    on dev)."""
    test = lambda prompts: task.accuracy(prompts, data.test.texts, data.test.labels).tolist()  # noqa: E731
    random_test = test(randoms)
    random_dev = task.accuracy(randoms, data.dev.texts, data.dev.labels).tolist()
    best = max(range(len(randoms)), key=lambda i: random_dev[i])
    return {
        "empty_prompt": {"prompt": "", "test_accuracy": test([""])[0]},
        "manual_prompt": {"prompt": manual, "test_accuracy": test([manual])[0]},
        "random_prompts": {
            "count": len(randoms),
            "test_accuracy_mean": sum(random_test) / len(random_test),
            "test_accuracy_std": torch.tensor(random_test).std().item() if len(randoms) > 1 else 0.0,
            "test_accuracy": random_test,
        },
        "best_random_on_dev": {
            "prompt": randoms[best],
            "dev_accuracy": random_dev[best],
            "test_accuracy": random_test[best],
        },
    }


def main(argv: list[str] | None = None) -> None:
    """Learn a prompt and write ``runs/<run>/prompt_opt/``."""
    run_args, data_args, task_args, args, model_args = parse_config(
        (RunArguments, DataArguments, PromptTaskArguments, PromptOptConfig, PPOModelArguments), argv
    )
    started = time.time()
    stage = StageDir(run_args.runs_dir, run_args.run, STAGE)
    check_resumable(stage, args.resume_from_checkpoint)
    policy_source = resolve_model_source(args.policy_model, "policy model")
    task_source = resolve_task_model(task_args.task_model)
    if len(task_args.verbalizers) != len(task_args.classes):
        raise PipelineError(
            f"verbalizers: {len(task_args.verbalizers)} given for {len(task_args.classes)} classes "
            f"{task_args.classes}; give one verbalizer per class, in the order of `classes`"
        )
    data = load_classification_data(
        data_args,
        task_args.classes,
        task_args.num_shots,
        seed=args.data_seed or args.seed,
        text_column=task_args.text_column,
        label_column=task_args.label_column,
    )
    tokenizer = load_tokenizer(policy_source, model_args.tokenizer_pad_token)
    args.allowed_token_ids = allowed_token_ids(tokenizer, args.allowed_tokens)
    task_model = load_task_model(
        task_source,
        task_args.task_model_kind,
        template=task_args.template,
        verbalizers=task_args.verbalizers,
        device=PartialState().device,
        dtype=task_args.task_dtype,
        batch_size=task_args.task_batch_size,
    )
    task = PromptTaskReward(
        task_model,
        data.train.texts,
        data.train.labels,
        task_args.verbalizers,
        template=task_args.template,
        reward=task_args.prompt_reward,
        correct_coef=task_args.correct_coef,
        incorrect_coef=task_args.incorrect_coef,
    )

    work = begin_stage(stage, resume=bool(args.resume_from_checkpoint))
    args.output_dir, args.logging_dir = str(work), str(work / "logs")
    if PartialState().is_main_process and not args.resume_from_checkpoint:
        stage.write_manifest(
            {"run": run_args, "data": data_args, "task": task_args, "prompt_opt": args, "model": model_args},
            {"policy_model": policy_source, "task_model": task_source, "dataset": data_args.dataset_name},
            started,
        )
    set_seed(args.seed)  # LoRA and value-head initialization
    model = build_policy(policy_source, args, model_args, tokenizer.pad_token_id)
    search = PromptSearch()
    trainer_class = SQLPromptTrainer if args.algorithm == "sql" else PromptOptTrainer
    trainer = trainer_class(
        args=args,
        model=model,
        tokenizer=tokenizer,
        # One constant input per process; each samples num_generations prompts from it.
        prompts=Dataset.from_dict({"prompt": [args.policy_input] * PartialState().num_processes}),
        work_dir=work,
        callbacks=[JsonlMetricsCallback(work)],
        task=task,
        dev=data.dev,
        search=search,
        dev_every=args.dev_every,
    )
    last = trainer.train()

    summary: dict = {}
    if trainer.accelerator.is_main_process:
        ranked = search.select(args.top_prompts, trainer.dev_accuracy)
        for record in ranked:
            append_metrics(work / PROMPTS, record.as_row())
        selected = ranked[0]
        test_accuracy = task.accuracy([selected.text], data.test.texts, data.test.labels)[0].item()
        randoms = random_prompts(tokenizer, args.allowed_token_ids, args.prompt_length, args.random_prompts, args.seed)
        trainer.unwrapped().policy.save_pretrained(work / "adapter", selected_adapters=[POLICY_ADAPTER])
        tokenizer.save_pretrained(work / "adapter")
        records = read_metrics(work / METRICS)
        plot_curves(records, work / "plots", PLOTS)
        summary = {
            "algorithm": args.algorithm,
            "selected_prompt": {**selected.as_row(), "test_accuracy": test_accuracy},
            "test_accuracy": test_accuracy,
            "baselines": baselines(task, data, args.manual_prompt, randoms),
            "task": {
                "task_model": task_args.task_model,
                "task_model_path": task_source,
                "kind": task_args.task_model_kind,
                "template": task.template,
                "verbalizers": task_args.verbalizers,
                "classes": data.class_names,
                "text_column": task_args.text_column,
            },
            "splits": {"train": len(data.train.texts), "dev": len(data.dev.texts), "test": len(data.test.texts)},
            "updates": trainer.progress.update,
            "prompts_scored_per_second": sum(r.get("reward/prompts_scored", 0) for r in records)
            / max(sum(r.get("time/reward", 0) for r in records), 1e-9),
            "seconds_per_update": {
                phase: sum(r.get(f"time/{phase}", 0) for r in records) / max(len(records), 1)
                for phase in ("generation", "forward", "reward", "update")
            },
            "last_update": last,
            "adapter": "adapter",
        }
    end_stage(stage, summary, started)
    if trainer.accelerator.is_main_process:
        base = summary["baselines"]
        print(
            f"prompt_opt ({args.algorithm}): {summary['selected_prompt']['text']!r} test accuracy "
            f"{test_accuracy:.3f} (empty {base['empty_prompt']['test_accuracy']:.3f}, manual "
            f"{base['manual_prompt']['test_accuracy']:.3f}, random mean "
            f"{base['random_prompts']['test_accuracy_mean']:.3f}); wrote {stage.final}"
        )
        refresh_report(run_args.runs_dir, run_args.run)


if __name__ == "__main__":
    run_main(main)
