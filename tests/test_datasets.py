"""pipeline.datasets: loading local files/folders, format detection and normalization, and bad-input messages."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pandas as pd
import pytest
from tokenizers import Tokenizer, models
from transformers import PreTrainedTokenizerFast

from pipeline.config import DataArguments
from pipeline.datasets import (
    PREFERENCE_FORMATS,
    SFT_FORMATS,
    detect_format,
    load_preference_data,
    load_prompt_data,
    load_raw,
    load_sft_data,
)
from pipeline.errors import PipelineError

FORMATS = Path(__file__).parent / "fixtures" / "formats"


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Keep the datasets cache of each test in its own folder, and never reach for the hub."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def fixture_args(name: str, **overrides) -> DataArguments:
    """Arguments that use every row of a fixture for training and evaluation alike."""
    path = str(FORMATS / name)
    return DataArguments(**{"dataset_name": path, "eval_dataset_name": path, **overrides})


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def chat_tokenizer(with_template: bool = True) -> PreTrainedTokenizerFast:
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>"
    )
    if with_template:
        tokenizer.chat_template = (
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}"
        )
    return tokenizer


PAIRS = [{"prompt": f"Question {i}?", "chosen": f" Good {i}.", "rejected": f" Bad {i}."} for i in range(20)]


# ---------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("file", "expected"),
    [
        ("preference.jsonl", "preference"),
        ("preference_chat.jsonl", "preference"),
        ("implicit_preference.jsonl", "implicit_preference"),
        ("implicit_preference_chat.jsonl", "implicit_preference"),
        ("hh_rlhf.jsonl", "hh_rlhf"),
        ("ultrafeedback.jsonl", "ultrafeedback"),
        ("shp.jsonl", "shp"),
        ("tldr.jsonl", "tldr"),
        ("prompt_completion.jsonl", "prompt_completion"),
        ("prompt_completion.json", "prompt_completion"),
        ("messages.jsonl", "messages"),
        ("text.jsonl", "text"),
        ("prompt.jsonl", "prompt"),
        ("prompt_chat.jsonl", "prompt"),
    ],
)
def test_detect_format_of_each_fixture(file, expected):
    train, _ = load_raw(fixture_args(file))
    assert detect_format(train.column_names, train[0], "prompt") == expected


def test_format_lists():
    assert set(PREFERENCE_FORMATS) == {"preference", "implicit_preference", "hh_rlhf", "ultrafeedback", "shp", "tldr"}
    assert SFT_FORMATS == ("prompt_completion", "messages", "text")


def test_detect_format_rejects_formats_the_stage_cannot_use():
    with pytest.raises(PipelineError, match="looks like 'messages' data") as error:
        detect_format(["messages"], {"messages": [user("hi"), assistant("yo")]}, "preference")
    assert "reward-model (preference) training" in str(error.value)
    assert "prompt + chosen + rejected" in str(error.value)
    with pytest.raises(PipelineError, match="looks like 'prompt' data"):
        detect_format(["prompt", "label"], {"prompt": "x", "label": 1}, "sft")


def test_unknown_format_lists_columns_formats_and_column_mapping():
    with pytest.raises(PipelineError) as error:
        detect_format(["question", "good", "bad"], {"question": "q", "good": "g", "bad": "b"}, "preference")
    message = str(error.value)
    assert "question, good, bad" in message
    for fmt in PREFERENCE_FORMATS:
        assert f"{fmt}:" in message
    assert "column_mapping" in message


def test_unknown_format_through_a_loader_names_the_file(tmp_path):
    path = write_jsonl(tmp_path / "odd.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(PipelineError, match=r"odd\.jsonl.*question, answer"):
        load_sft_data(DataArguments(dataset_name=str(path)))


# ---------------------------------------------------------------------------------------------------------------
# Preference normalization
# ---------------------------------------------------------------------------------------------------------------


def test_explicit_preference_keeps_margin_as_float():
    train, evaluation = load_preference_data(fixture_args("preference.jsonl"))
    assert train.column_names == ["prompt", "chosen", "rejected", "margin"]
    assert train[1] == {
        "prompt": "How many legs does a cat have?",
        "chosen": " Four.",
        "rejected": " Seven.",
        "margin": 1.5,
    }
    assert train["margin"] == [2.0, 1.5, 0.0, 3.0]
    # identical chosen and rejected are allowed
    assert train[2]["chosen"] == train[2]["rejected"] == " Yes, ice is cold."
    assert len(evaluation) == 4


def test_preference_rows_keep_the_columns_asked_for(tmp_path):
    rows = [pair | {"gold_chosen": 0.5, "gold_rejected": -0.5, "source": "web"} for pair in PAIRS[:4]]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    args = DataArguments(dataset_name=str(path), eval_dataset_name=str(path))
    train, evaluation = load_preference_data(args, keep_columns=("gold_chosen", "gold_rejected", "not_there"))
    expected = ["prompt", "chosen", "rejected", "gold_chosen", "gold_rejected"]
    assert train.column_names == evaluation.column_names == expected
    assert evaluation[0]["gold_rejected"] == -0.5
    assert load_preference_data(args)[0].column_names == ["prompt", "chosen", "rejected"]


def test_explicit_conversational_preference():
    train, _ = load_preference_data(fixture_args("preference_chat.jsonl"))
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train[1] == {
        "prompt": [{"role": "system", "content": "Be brief."}, user("Opposite of up?")],
        "chosen": [assistant("Down.")],
        "rejected": [assistant("Sideways.")],
    }


def test_implicit_preference_strings_split_at_a_word_boundary():
    train, _ = load_preference_data(fixture_args("implicit_preference.jsonl"))
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train[0] == {"prompt": "Question: what is two plus two? Answer:", "chosen": " four.", "rejected": " five."}
    assert train[1] == {"prompt": "Tell me a fruit.", "chosen": "\n\nAn apple.", "rejected": "\n\nA brick."}
    # the shared prefix ends inside "A horse"/"A mouse": the cut falls at the last whitespace, never mid-word
    assert train[2]["prompt"] == "Which is larger, a mouse or a horse? A"
    assert (train[2]["chosen"], train[2]["rejected"]) == (" horse.", " mouse.")


def test_implicit_preference_messages_take_all_but_the_last_message_as_prompt():
    train, _ = load_preference_data(fixture_args("implicit_preference_chat.jsonl"))
    assert train[1] == {
        "prompt": [user("Recommend a book."), assistant("Try a mystery novel."), user("Shorter?")],
        "chosen": [assistant("A short story collection.")],
        "rejected": [assistant("No.")],
    }


def test_hh_rlhf_prompt_runs_to_the_last_assistant_marker():
    train, _ = load_preference_data(fixture_args("hh_rlhf.jsonl"))
    assert train[1] == {
        "prompt": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: What is a good name for a dog?\n\nAssistant:",
        "chosen": " Biscuit is a friendly name.",
        "rejected": " Dogs do not need names.",
    }
    assert train[0]["prompt"] == "\n\nHuman: How do I boil an egg?\n\nAssistant:"


def test_ultrafeedback_becomes_conversational_explicit_preference():
    train, _ = load_preference_data(fixture_args("ultrafeedback.jsonl"))
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train[1] == {
        "prompt": [user("List two primary colours.")],
        "chosen": [assistant("Red and blue.")],
        "rejected": [assistant("Green and pink.")],
    }


def test_ultrafeedback_with_reply_only_lists_uses_the_prompt_text(tmp_path):
    path = write_jsonl(
        tmp_path / "uf.jsonl",
        [{"prompt": "Say yes.", "chosen": [assistant("Yes.")], "rejected": [assistant("No.")]}] * 2,
    )
    train, _ = load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))
    assert train[0]["prompt"] == [user("Say yes.")]


def test_shp_label_picks_the_preferred_reply():
    train, _ = load_preference_data(fixture_args("shp.jsonl"))
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train[0] == {
        "prompt": "How long should I rest a loaf of bread before cutting it?",
        "chosen": "\n\nAt least an hour, so the crumb can set.",
        "rejected": "\n\nCut it right away, who cares.",
    }
    assert train[1] == {  # labels 0: B preferred
        "prompt": "Why are my tomato leaves turning yellow?",
        "chosen": "\n\nOften overwatering or a lack of nitrogen.",
        "rejected": "\n\nTomatoes are blue.",
    }


def test_tldr_renders_the_post_and_picks_the_chosen_summary():
    train, _ = load_preference_data(fixture_args("tldr.jsonl"))
    assert train.column_names == ["prompt", "chosen", "rejected"]
    assert train[1] == {
        "prompt": "SUBREDDIT: r/relationships\nTITLE: Roommate and the dishes\nPOST: My roommate never washes dishes "
        "and the sink is always full. I have asked twice already.\nTL;DR:",
        "chosen": " roommate never does the dishes despite being asked twice",
        "rejected": " dishes",
    }
    assert train[0]["chosen"] == " new cat hides under bed, how to help her settle"


def test_forced_format_overrides_detection():
    # Read as implicit preference, the HH dialogues split at the longest shared prefix instead of the marker.
    train, _ = load_preference_data(fixture_args("hh_rlhf.jsonl", dataset_format="implicit_preference"))
    assert train[0]["prompt"] == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    assert train[0]["chosen"] == " Put it in boiling water for about nine minutes."
    assert train[2]["prompt"] == "\n\nHuman: Thanks for the help.\n\nAssistant:"


# ---------------------------------------------------------------------------------------------------------------
# SFT normalization
# ---------------------------------------------------------------------------------------------------------------


def test_sft_prompt_completion():
    train, _ = load_sft_data(fixture_args("prompt_completion.jsonl"))
    assert train.column_names == ["prompt", "completion"]
    assert train[0] == {"prompt": "The capital of Italy is", "completion": " Rome."}


def test_sft_messages():
    train, _ = load_sft_data(fixture_args("messages.jsonl"))
    assert train.column_names == ["messages"]
    assert train[1]["messages"] == [
        {"role": "system", "content": "Answer in one word."},
        user("Colour of grass?"),
        assistant("Green."),
    ]


def test_sft_text_drops_other_columns():
    train, _ = load_sft_data(fixture_args("text.jsonl"))
    assert train.column_names == ["text"]
    assert train[2] == {"text": "A quiet walk by the river lifted her spirits."}


def test_sft_from_preference_uses_prompt_and_chosen():
    train, _ = load_sft_data(fixture_args("preference.jsonl"))
    assert train.column_names == ["prompt", "completion"]
    assert train[0] == {"prompt": "Name a colour of the sea.", "completion": " Blue."}
    chat, _ = load_sft_data(fixture_args("ultrafeedback.jsonl"))
    assert chat[2] == {
        "prompt": [user("Explain what a noun is.")],
        "completion": [assistant("A noun names a person, place or thing.")],
    }


def test_sft_refuses_prompt_only_data():
    with pytest.raises(PipelineError, match="cannot be used for supervised fine-tuning"):
        load_sft_data(fixture_args("prompt.jsonl"))


# ---------------------------------------------------------------------------------------------------------------
# Prompt data for RL
# ---------------------------------------------------------------------------------------------------------------


def test_prompt_only_rows_keep_other_columns():
    train, _ = load_prompt_data(fixture_args("prompt.jsonl"), chat_tokenizer())
    assert train.column_names == ["prompt", "label"]
    assert train[1] == {"prompt": "Describe a gloomy afternoon in", "label": 0}


def test_conversational_prompts_stay_messages_for_the_trainer_to_render():
    """As in TRL's trainers: the chat template is applied when tokenizing (so it writes the special tokens once)."""
    train, _ = load_prompt_data(fixture_args("prompt_chat.jsonl"), chat_tokenizer())
    assert set(train.column_names) == {"prompt", "topic"}
    system, user = {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Describe the sky."}
    assert train[1] == {"prompt": [system, user], "topic": "sky"}


def test_prompts_from_messages_drop_the_final_assistant_reply():
    train, _ = load_prompt_data(fixture_args("messages.jsonl"), chat_tokenizer())
    assert train.column_names == ["prompt"]
    assert train[0]["prompt"] == [{"role": "user", "content": "Give me a synonym for happy."}]


def test_prompts_from_text_keep_labels():
    train, _ = load_prompt_data(fixture_args("text.jsonl"), chat_tokenizer())
    assert set(train.column_names) == {"prompt", "label"}
    assert train[1] == {"prompt": "The train was late again and everyone was annoyed.", "label": 0}


def test_prompts_from_preference_formats():
    hh, _ = load_prompt_data(fixture_args("hh_rlhf.jsonl"), chat_tokenizer())
    assert hh.column_names == ["prompt"]
    assert hh[0]["prompt"] == "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    explicit, _ = load_prompt_data(fixture_args("preference.jsonl"), chat_tokenizer())
    assert explicit.column_names == ["prompt"]
    assert explicit["prompt"][3] == "Say hello politely."
    ultrafeedback, _ = load_prompt_data(fixture_args("ultrafeedback.jsonl"), chat_tokenizer())
    assert ultrafeedback[0]["prompt"] == [{"role": "user", "content": "Write a haiku about rain."}]
    assert "score_chosen" in ultrafeedback.column_names  # extras are kept for rewards that want them


def test_conversational_prompts_need_a_chat_template():
    with pytest.raises(PipelineError, match=r"row 0, column 'prompt' is a list of chat messages.*no chat template"):
        load_prompt_data(fixture_args("prompt_chat.jsonl"), chat_tokenizer(with_template=False))


# ---------------------------------------------------------------------------------------------------------------
# File types, folders, column mapping
# ---------------------------------------------------------------------------------------------------------------


def test_csv_with_column_mapping():
    args = fixture_args(
        "custom_columns.csv", column_mapping={"question": "prompt", "good": "chosen", "bad": "rejected"}
    )
    raw, _ = load_raw(args)
    assert raw.column_names == ["prompt", "chosen", "rejected", "topic"]
    train, _ = load_preference_data(args)
    assert train[1] == {"prompt": "Which animal says moo?", "chosen": " A cow.", "rejected": " A duck."}


def test_column_mapping_given_as_json_text():
    args = fixture_args("custom_columns.csv", column_mapping='{"question": "prompt", "good": "completion"}')
    train, _ = load_sft_data(args)
    assert train[3] == {"prompt": "How many days are in a leap year?", "completion": " 366."}


def test_json_array_file():
    train, _ = load_sft_data(fixture_args("prompt_completion.json"))
    assert train[1] == {"prompt": "The largest planet is", "completion": " Jupiter."}


def test_parquet_file(tmp_path):
    path = tmp_path / "pairs.parquet"
    pd.DataFrame(PAIRS[:4]).to_parquet(path)
    train, evaluation = load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))
    assert train[3] == {"prompt": "Question 3?", "chosen": " Good 3.", "rejected": " Bad 3."}
    assert len(evaluation) == 4


def test_folder_splits_by_file_name(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:6])
    write_jsonl(tmp_path / "test.jsonl", PAIRS[6:8])
    train, evaluation = load_raw(DataArguments(dataset_name=str(tmp_path)))
    assert train["prompt"] == [f"Question {i}?" for i in range(6)]
    assert evaluation["prompt"] == ["Question 6?", "Question 7?"]


def test_folder_with_several_train_files_and_a_chosen_eval_split(tmp_path):
    write_jsonl(tmp_path / "train-00.jsonl", PAIRS[:3])
    write_jsonl(tmp_path / "train-01.jsonl", PAIRS[3:5])
    write_jsonl(tmp_path / "validation.jsonl", PAIRS[5:6])
    (tmp_path / "README.md").write_text("not data")
    train, evaluation = load_raw(DataArguments(dataset_name=str(tmp_path), dataset_test_split="validation"))
    assert len(train) == 5
    assert evaluation["prompt"] == ["Question 5?"]


def test_folder_file_with_no_split_name(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:3])
    write_jsonl(tmp_path / "extra.jsonl", PAIRS[3:5])
    with pytest.raises(PipelineError, match=r"extra\.jsonl.*train\*, test\*, eval\* or validation\*"):
        load_raw(DataArguments(dataset_name=str(tmp_path)))


def test_folder_with_mixed_file_types_in_a_split(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", PAIRS[:3])
    pd.DataFrame(PAIRS[3:5]).to_csv(tmp_path / "train2.csv", index=False)
    with pytest.raises(PipelineError, match=r"mixes file types \(\.csv, \.jsonl\)"):
        load_raw(DataArguments(dataset_name=str(tmp_path)))


def test_folder_without_train_split(tmp_path):
    write_jsonl(tmp_path / "test.jsonl", PAIRS[:3])
    with pytest.raises(PipelineError, match=r"has no 'train' split \(it has: test\); set dataset_train_split"):
        load_raw(DataArguments(dataset_name=str(tmp_path)))


def test_column_mapping_of_a_missing_column_lists_the_columns():
    args = fixture_args("custom_columns.csv", column_mapping={"query": "prompt"})
    with pytest.raises(PipelineError) as error:
        load_raw(args)
    assert "column_mapping names column(s) query" in str(error.value)
    assert "custom_columns.csv" in str(error.value)
    assert "question, good, bad, topic" in str(error.value)


def test_column_mapping_onto_an_existing_column():
    args = fixture_args("custom_columns.csv", column_mapping={"question": "topic"})
    with pytest.raises(PipelineError, match="two columns named topic"):
        load_raw(args)


# ---------------------------------------------------------------------------------------------------------------
# Eval split and sample limits
# ---------------------------------------------------------------------------------------------------------------


def test_held_out_eval_is_seeded_disjoint_and_in_file_order(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS)
    args = DataArguments(dataset_name=str(path), eval_fraction=0.2)
    train, evaluation = load_raw(args)
    again_train, again_eval = load_raw(args)
    assert (len(train), len(evaluation)) == (16, 4)
    assert evaluation["prompt"] == again_eval["prompt"] and train["prompt"] == again_train["prompt"]
    numbers = [int(p.split()[1][:-1]) for p in train["prompt"]]
    held_out = [int(p.split()[1][:-1]) for p in evaluation["prompt"]]
    assert sorted(numbers + held_out) == list(range(20))
    assert numbers == sorted(numbers) and held_out == sorted(held_out)
    assert held_out != [16, 17, 18, 19]  # drawn at random, not the tail


def test_held_out_eval_rounds_up_to_one_row(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", PAIRS[:3])
    train, evaluation = load_raw(DataArguments(dataset_name=str(path)))
    assert (len(train), len(evaluation)) == (2, 1)


def test_one_row_is_too_few_to_hold_out(tmp_path):
    path = write_jsonl(tmp_path / "one.jsonl", PAIRS[:1])
    with pytest.raises(PipelineError, match="has 1 row.*too few to hold out.*eval_dataset_name"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_eval_dataset_name_takes_precedence_over_the_test_split(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", PAIRS[:5])
    write_jsonl(folder / "test.jsonl", PAIRS[5:7])
    other = write_jsonl(tmp_path / "other.jsonl", PAIRS[10:13])
    train, evaluation = load_raw(DataArguments(dataset_name=str(folder), eval_dataset_name=str(other)))
    assert len(train) == 5
    assert evaluation["prompt"] == ["Question 10?", "Question 11?", "Question 12?"]


def test_eval_dataset_folder_uses_its_test_split(tmp_path):
    folder = tmp_path / "eval_data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", PAIRS[:5])
    write_jsonl(folder / "test.jsonl", PAIRS[5:7])
    main = write_jsonl(tmp_path / "main.jsonl", PAIRS[10:14])
    train, evaluation = load_raw(DataArguments(dataset_name=str(main), eval_dataset_name=str(folder)))
    assert len(train) == 4
    assert evaluation["prompt"] == ["Question 5?", "Question 6?"]


def test_max_samples_keep_the_first_rows(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", PAIRS[:10])
    write_jsonl(folder / "test.jsonl", PAIRS[10:16])
    args = DataArguments(dataset_name=str(folder), max_train_samples=3, max_eval_samples=2)
    train, evaluation = load_preference_data(args)
    assert train["prompt"] == ["Question 0?", "Question 1?", "Question 2?"]
    assert evaluation["prompt"] == ["Question 10?", "Question 11?"]
    more_than_there_is, _ = load_raw(DataArguments(dataset_name=str(folder), max_train_samples=100))
    assert len(more_than_there_is) == 10


def test_max_samples_must_be_positive():
    with pytest.raises(PipelineError, match="max_eval_samples must be at least 1, got 0"):
        load_raw(fixture_args("preference.jsonl", max_eval_samples=0))


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------


def test_no_dataset_name():
    with pytest.raises(PipelineError, match="no dataset given"):
        load_raw(DataArguments())


@pytest.mark.parametrize("name", ["./missing.jsonl", "/nowhere/data", "a/b/c", "pairs.parquet", "~/no/such/file"])
def test_missing_local_path_is_named(name):
    with pytest.raises(PipelineError, match=f"dataset path '{name}' does not exist"):
        load_raw(DataArguments(dataset_name=name))


def test_hub_id_while_offline_asks_for_a_local_file():
    with pytest.raises(PipelineError) as error:
        load_raw(DataArguments(dataset_name="some-org/some-dataset-that-is-not-cached"))
    message = str(error.value)
    assert "'some-org/some-dataset-that-is-not-cached'" in message
    assert "no hub is reachable (HF_HUB_OFFLINE=1)" in message
    assert "local .jsonl/.json/.csv/.parquet file" in message


def test_unsupported_extension(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("hello\n")
    with pytest.raises(
        PipelineError, match=r"unsupported file type '\.txt'.*pairs\.txt.*use \.jsonl, \.json, \.csv or \.parquet"
    ):
        load_raw(DataArguments(dataset_name=str(path)))


def test_malformed_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": "also fine"}\n{"text": "cut off\n')
    with pytest.raises(PipelineError, match=r"broken\.jsonl', line 4 is not valid JSON"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_json_line_that_is_not_an_object(tmp_path):
    path = tmp_path / "list.jsonl"
    path.write_text('{"text": "fine"}\n["a", "b"]\n')
    with pytest.raises(PipelineError, match=r"list\.jsonl', line 2 is not a JSON object"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_json_file_holding_json_lines(tmp_path):
    path = write_jsonl(tmp_path / "lines.json", PAIRS[:3])
    train, _ = load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))
    assert train[2] == {"prompt": "Question 2?", "chosen": " Good 2.", "rejected": " Bad 2."}


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes('{"text": "café"}\n'.encode("latin-1"))
    with pytest.raises(PipelineError, match=r"latin1\.jsonl' is not UTF-8 text"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_malformed_json_array_names_the_line(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[\n  {"text": "fine"},\n  {"text": "oops",,}\n]\n')
    with pytest.raises(PipelineError, match=r"broken\.json' is not valid JSON: line 3"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_malformed_csv_names_the_file(tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text("prompt,completion\na,b\nc,d,e,f\n")
    with pytest.raises(PipelineError, match=r"could not read .*broken\.csv.*line 3"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(PipelineError, match=r"empty\.jsonl' is empty: it has no rows"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_json_array_with_zero_rows(tmp_path):
    path = tmp_path / "none.json"
    path.write_text("[]")
    with pytest.raises(PipelineError, match=r"none\.json' is empty: it has no rows"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_parquet_with_zero_rows(tmp_path):
    path = tmp_path / "empty.parquet"
    pd.DataFrame({"prompt": pd.Series([], dtype=str), "completion": pd.Series([], dtype=str)}).to_parquet(path)
    with pytest.raises(PipelineError, match=r"empty\.parquet' is empty: it has no rows"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_csv_with_only_a_header(tmp_path):
    path = tmp_path / "header.csv"
    path.write_text("prompt,completion\n")
    with pytest.raises(PipelineError, match=r"header\.csv' is empty: it has no rows"):
        load_raw(DataArguments(dataset_name=str(path)))


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"not a parquet file")
    with pytest.raises(PipelineError, match=r"could not read '.*corrupt\.parquet' as parquet"):
        load_raw(DataArguments(dataset_name=str(path)))


@pytest.mark.parametrize(
    ("bad_value", "problem"),
    [("", "is empty; every row needs a value here"), (None, r"is empty \(null\)"), ("   ", "is empty;")],
)
def test_empty_value_names_row_and_column(tmp_path, bad_value, problem):
    rows = [dict(row) for row in PAIRS[:4]]
    rows[2]["chosen"] = bad_value
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(PipelineError, match=rf"pairs\.jsonl, row 2, column 'chosen' {problem}"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_empty_value_in_csv(tmp_path):
    path = tmp_path / "pairs.csv"
    path.write_text("prompt,completion\nHello,there\n,nobody\n")
    with pytest.raises(PipelineError, match=r"pairs\.csv, row 1, column 'prompt' is empty"):
        load_sft_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_row_numbers_of_held_out_rows_refer_to_the_file(tmp_path):
    rows = [dict(row) for row in PAIRS]
    rows[13]["rejected"] = ""
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(PipelineError, match=r"row 13, column 'rejected' is empty"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_fraction=0.5))


def test_forced_format_with_a_missing_column():
    with pytest.raises(PipelineError) as error:
        load_preference_data(fixture_args("implicit_preference.jsonl", dataset_format="preference"))
    message = str(error.value)
    assert "lacks column(s) prompt needed by dataset_format 'preference'" in message
    assert "its columns are: chosen, rejected" in message
    assert "column_mapping" in message


def test_unknown_or_unusable_forced_format():
    with pytest.raises(PipelineError, match="unknown dataset_format 'hh'; use 'auto' or one of: preference"):
        load_preference_data(fixture_args("hh_rlhf.jsonl", dataset_format="hh"))
    with pytest.raises(PipelineError, match="dataset_format 'text' cannot be used for reward-model"):
        load_preference_data(fixture_args("text.jsonl", dataset_format="text"))


def test_mixed_text_and_messages(tmp_path):
    path = write_jsonl(
        tmp_path / "mixed.jsonl", [{"prompt": [user("hi")], "chosen": [assistant("yo")], "rejected": "no"}]
    )
    with pytest.raises(
        PipelineError, match="row 0, column 'prompt/chosen/rejected' must all be text or all be message"
    ):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_malformed_message(tmp_path):
    path = write_jsonl(tmp_path / "chat.jsonl", [{"messages": [user("hi"), {"role": "assistant"}]}])
    with pytest.raises(PipelineError, match=r"row 0, column 'messages' message 1 should be \{'role'"):
        load_sft_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_hh_dialogue_without_assistant_turn(tmp_path):
    rows = [
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant: go"},
        {"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi"},
    ]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.raises(PipelineError, match=r"row 1, column 'rejected' has no .*Assistant:.* turn"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_hh_dialogue_with_an_empty_reply(tmp_path):
    rows = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello", "rejected": "\n\nHuman: hi\n\nAssistant:"}]
    path = write_jsonl(tmp_path / "hh.jsonl", rows)
    with pytest.raises(PipelineError, match=r"row 0, column 'rejected' has an empty reply"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_implicit_pair_without_shared_prompt(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", [{"chosen": "Sunny today.", "rejected": "Rain again."}])
    with pytest.raises(PipelineError, match="row 0, column 'chosen' shares no leading prompt text"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_implicit_conversations_that_diverge_early(tmp_path):
    rows = [{"chosen": [user("a"), assistant("b"), user("c"), assistant("d")], "rejected": [user("x"), assistant("y")]}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(PipelineError, match="column 'rejected' differs from chosen before the last message"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_shp_bad_label(tmp_path):
    row = {"history": "Q?", "human_ref_A": "A.", "human_ref_B": "B.", "labels": 2}
    path = write_jsonl(tmp_path / "shp.jsonl", [row])
    with pytest.raises(PipelineError, match=r"column 'labels' should be 1 \(human_ref_A preferred\).*found 2"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_tldr_missing_post(tmp_path):
    row = {
        "info": {"post": None, "title": "T", "subreddit": "s"},
        "summaries": [{"text": "a"}, {"text": "b"}],
        "choice": 0,
    }
    path = write_jsonl(tmp_path / "tldr.jsonl", [row])
    with pytest.raises(PipelineError, match=r"row 0, column 'info.post' is empty \(null\)"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))


def test_non_numeric_margin(tmp_path):
    rows = [{**PAIRS[0], "margin": 1.0}, {**PAIRS[1], "margin": None}]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(PipelineError, match="row 1, column 'margin' should be a number, found None"):
        load_preference_data(DataArguments(dataset_name=str(path), eval_dataset_name=str(path)))
