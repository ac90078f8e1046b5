"""reward_models.inputs: the ids a reward model reads are those TRL's RewardTrainer trains a decoder on (text and
chat rows, one BOS), an encoder's text pairs as its tokenizer encodes them, and the same batches in training and
scoring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from trl import RewardConfig, RewardTrainer

from pipeline.errors import PipelineError
from reward_models.inputs import (
    RewardPairCollator,
    is_cross_encoder,
    reward_model_batch,
    reward_model_ids,
    segment_ids,
)
from tests.conftest import BOS_CHAT_TEMPLATE

PROMPTS = ["Review of the cafe in Porto:", "Rate the blender:"]
CHOSEN = [" I loved it, I would go again.", " Fine."]
REJECTED = [" Terrible.", " It broke on the first day and the shop would not take it back."]


def messages(role: str, texts: list[str]) -> list[list[dict]]:
    return [[{"role": role, "content": text}] for text in texts]


def reward_trainer_ids(base: Path, tokenizer, rows: dict, out: Path) -> tuple[list, list]:
    """The chosen and rejected ids TRL's RewardTrainer makes of ``rows`` for training."""
    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(base, num_labels=1),
        args=RewardConfig(output_dir=str(out), report_to="none", bf16=False),
        train_dataset=Dataset.from_dict(rows),
        processing_class=tokenizer,
    )
    return trainer.train_dataset["chosen_ids"], trainer.train_dataset["rejected_ids"]


@pytest.fixture(scope="module")
def chat_tokenizer(tiny_base: Path):
    """The demo tokenizer (it adds a BOS to every text) with a chat template that writes a BOS too."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_base)
    tokenizer.chat_template = BOS_CHAT_TEMPLATE
    return tokenizer


def test_decoder_text_is_prompt_completion_eos_as_the_reward_trainer_tokenizes_it(tiny_base, chat_tokenizer, tmp_path):
    rows = {"prompt": PROMPTS, "chosen": CHOSEN, "rejected": REJECTED}
    chosen, rejected = reward_trainer_ids(tiny_base, chat_tokenizer, rows, tmp_path)
    assert reward_model_ids(chat_tokenizer, PROMPTS, CHOSEN) == chosen
    assert reward_model_ids(chat_tokenizer, PROMPTS, REJECTED) == rejected
    assert all(ids[0] == chat_tokenizer.bos_token_id and ids[-1] == chat_tokenizer.eos_token_id for ids in chosen)


def test_chat_rows_get_one_bos_as_the_reward_trainer_tokenizes_them(tiny_base, chat_tokenizer, tmp_path):
    prompts = messages("user", PROMPTS)
    rows = {"prompt": prompts, "chosen": messages("assistant", CHOSEN), "rejected": messages("assistant", REJECTED)}
    chosen, rejected = reward_trainer_ids(tiny_base, chat_tokenizer, rows, tmp_path)
    ours = reward_model_ids(chat_tokenizer, prompts, rows["chosen"])
    assert ours == chosen and reward_model_ids(chat_tokenizer, prompts, rows["rejected"]) == rejected
    assert [ids.count(chat_tokenizer.bos_token_id) for ids in ours] == [1, 1]


def test_chat_rows_without_a_chat_template_say_what_to_do(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    with pytest.raises(PipelineError, match=r"chat messages but the tokenizer .* has no chat template"):
        reward_model_ids(tokenizer, messages("user", PROMPTS), messages("assistant", CHOSEN))


def test_encoder_text_is_a_pair_without_eos(tiny_bert, tiny_base):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    assert is_cross_encoder(tokenizer) and not is_cross_encoder(AutoTokenizer.from_pretrained(tiny_base))
    ids = reward_model_ids(tokenizer, PROMPTS, CHOSEN)
    assert ids == [tokenizer(prompt, c)["input_ids"] for prompt, c in zip(PROMPTS, CHOSEN, strict=True)]
    cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
    assert all(row[0] == cls and row[-1] == sep and row.count(sep) == 2 for row in ids)


def test_encoder_batch_has_the_tokenizers_own_segment_ids(tiny_bert):
    tokenizer = AutoTokenizer.from_pretrained(tiny_bert)
    batch = reward_model_batch(reward_model_ids(tokenizer, PROMPTS, REJECTED), tokenizer)
    expected = tokenizer(PROMPTS, REJECTED, padding=True, return_tensors="pt")
    assert set(batch) == {"input_ids", "attention_mask", "token_type_ids"}
    for key, value in expected.items():
        torch.testing.assert_close(batch[key], value, msg=key)


def test_segment_ids_by_hand():
    sep = 9
    ids = torch.tensor([[1, 5, 9, 6, 7, 9, 0], [1, 5, 9, 0, 0, 0, 0]])
    mask = (ids != 0).long()
    assert segment_ids(ids, mask, sep).tolist() == [[0, 0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]]


def test_training_batches_are_the_scoring_batches(tiny_bert, tiny_base):
    """The RM stage's collator pads chosen then rejected rows exactly as the reward source pads what it scores."""
    for folder in (tiny_bert, tiny_base):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        chosen, rejected = reward_model_ids(tokenizer, PROMPTS, CHOSEN), reward_model_ids(tokenizer, PROMPTS, REJECTED)
        examples = [{"chosen_ids": c, "rejected_ids": r, "margin": 1.0} for c, r in zip(chosen, rejected, strict=True)]
        training = RewardPairCollator(tokenizer)(examples)
        scoring = reward_model_batch(chosen + rejected, tokenizer)
        assert set(training) == set(scoring) | {"margin"}
        for key, value in scoring.items():
            torch.testing.assert_close(training[key], value, msg=key)
