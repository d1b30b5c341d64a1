"""Chat and completion readers: every format lands in OpenAI `messages` form with its location, nothing dropped."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from tunelab.data.conversations import (
    BUNDLED_CHAT_DATA,
    CHAT_FORMATS,
    chat_dataset,
    detect_format,
    read_chat_records,
    read_completion_texts,
    to_messages,
)
from tunelab.data.doctor import DoctorContext, run_checks
from tunelab.data.sources import DataError


def write_jsonl(path: Path, records: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def roles(record: dict[str, Any]) -> list[str]:
    return [m["role"] for m in record["messages"]]


def test_formats_and_detection() -> None:
    assert CHAT_FORMATS == ("auto", "messages", "alpaca", "sharegpt")
    assert detect_format({"messages": []}) == "messages"
    assert detect_format({"conversations": []}) == "sharegpt"
    assert detect_format({"instruction": "q", "output": "a"}) == "alpaca"
    assert detect_format({"instruction": "q"}) is None
    assert detect_format({"text": "x"}) is None


def test_messages_jsonl_keeps_system_turns_and_tools(tmp_path: Path) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    chat = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
                         {"role": "assistant", "content": "Bye."}], "tools": tools}
    rows = read_chat_records(write_jsonl(tmp_path / "chat.jsonl", [chat]))
    assert rows == [(f"{tmp_path / 'chat.jsonl'}:1", chat)]
    ds = chat_dataset(rows)
    assert ds.column_names == ["messages", "location"]
    assert [m["role"] for m in ds[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    assert ds[0]["messages"][4] == {"role": "assistant", "content": "Bye.", "weight": 1}


def test_alpaca_with_and_without_input_and_system(tmp_path: Path) -> None:
    records = [{"instruction": "Translate", "input": "hej", "output": "hello"},
               {"instruction": "Say hi", "input": "", "output": "hi"},
               {"instruction": "Say hi", "output": "hi", "system": "You are polite."}]
    rows = read_chat_records(write_jsonl(tmp_path / "a.jsonl", records))
    assert rows[0][1] == {"messages": [{"role": "user", "content": "Translate\n\nhej"},
                                       {"role": "assistant", "content": "hello"}]}
    assert rows[1][1]["messages"][0] == {"role": "user", "content": "Say hi"}
    assert roles(rows[2][1]) == ["system", "user", "assistant"]
    assert rows[2][1]["messages"][0]["content"] == "You are polite."


def test_sharegpt_role_mapping_keeps_unknown_speakers(tmp_path: Path) -> None:
    record = {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "q"},
                                {"from": "gpt", "value": "a"}, {"from": "function", "value": "r"},
                                {"from": "chatgpt", "value": "b"}, {"from": "observation", "value": "o"},
                                {"from": "model", "value": "c"}, {"from": "narrator", "value": "n"}]}
    [(location, converted)] = read_chat_records(write_jsonl(tmp_path / "s.jsonl", [record]))
    assert location.endswith("s.jsonl:1")
    assert roles(converted) == ["system", "user", "assistant", "tool", "assistant", "tool", "assistant", "narrator"]
    assert [m["content"] for m in converted["messages"]][:3] == ["S", "q", "a"]


def test_json_array_file(tmp_path: Path) -> None:
    path = tmp_path / "set.json"
    path.write_text(json.dumps([{"instruction": "q1", "output": "a1"}, {"instruction": "q2", "output": "a2"}]),
                    encoding="utf-8")
    rows = read_chat_records(str(path))
    assert [loc for loc, _ in rows] == [f"{path} record 0", f"{path} record 1"]
    assert rows[1][1]["messages"][1] == {"role": "assistant", "content": "a2"}


def test_auto_detect_failure_names_file_keys_and_fix(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "odd.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(DataError) as err:
        read_chat_records(source)
    message = str(err.value)
    assert source in message and "'prompt'" in message and "'completion'" in message
    assert "conversations" in message and "data.format" in message


def test_unknown_format_is_an_error_with_suggestion(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "a.jsonl", [{"instruction": "q", "output": "a"}])
    with pytest.raises(DataError, match="did you mean 'sharegpt'"):
        read_chat_records(source, fmt="sharegtp")


def test_missing_output_is_kept_and_flagged_with_location(tmp_path: Path) -> None:
    records = [{"instruction": "q1", "output": "a1"}, {"instruction": "q2"}, {"instruction": "q3", "output": "a3"}]
    source = write_jsonl(tmp_path / "a.jsonl", records)
    rows = read_chat_records(source)
    assert [loc for loc, _ in rows] == [f"{source}:1", f"{source}:2", f"{source}:3"]
    assert rows[1][1]["messages"][1] == {"role": "assistant", "content": None}
    findings = {f.check: f for f in run_checks(DoctorContext(splits={}, labels=[], records={"train": rows}))}
    assert findings["chat-missing-content"].examples == [f"{source}:2 message 2: no content"]


def test_rows_not_matching_the_detected_format_are_kept(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "s.jsonl", [{"conversations": [{"from": "human", "value": "q"},
                                                                   {"from": "gpt", "value": "a"}]},
                                                {"text": "stray"}])
    rows = read_chat_records(source)
    assert len(rows) == 2 and rows[1] == (f"{source}:2", {"text": "stray"})
    findings = {f.check: f for f in run_checks(DoctorContext(splits={}, labels=[], records={"train": rows}))}
    assert findings["chat-missing-messages"].examples == [f"{source}:2: no 'messages'"]


def test_content_parts_are_joined_and_none_becomes_empty() -> None:
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is"},
                                                        {"type": "image_url", "image_url": {"url": "x"}},
                                                        {"type": "text", "text": "this?"}]},
                           {"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]}
    ds = chat_dataset([("c.jsonl:1", to_messages(record, "messages"))])
    assert ds[0]["messages"] == [{"role": "user", "content": "What is\nthis?", "weight": 1},
                                 {"role": "assistant", "content": "", "weight": 1}]
    assert ds[0]["location"] == "c.jsonl:1"


def test_weight_zero_is_kept_so_the_turn_is_not_trained() -> None:
    record = {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "weight": 0},
                           {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}
    ds = chat_dataset([("w.jsonl:1", to_messages(record, "messages"))])
    assert [m["weight"] for m in ds[0]["messages"]] == [1, 0, 1, 1]


def test_bundled_construction_faq() -> None:
    assert "construction-faq" in BUNDLED_CHAT_DATA
    rows = read_chat_records("construction-faq")
    assert len(rows) == 503
    assert rows[0][0] == "construction-faq:1" and rows[-1][0] == "construction-faq:503"
    first = rows[0][1]["messages"]
    assert [m["role"] for m in first] == ["user", "assistant"]
    assert first[0]["content"] == "What is a bygglov (building permit)?"


def test_missing_chat_file_suggests_the_bundled_set() -> None:
    with pytest.raises(DataError, match="did you mean the bundled chat set 'construction-faq'"):
        read_chat_records("construction-fac")


def test_doctor_flags_unknown_sharegpt_speaker_with_location(tmp_path: Path) -> None:
    good = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    bad = {"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}
    source = write_jsonl(tmp_path / "share.jsonl", [good] * 11 + [bad])
    rows = read_chat_records(source, fmt="sharegpt")
    findings = {f.check: f for f in run_checks(DoctorContext(splits={}, labels=[], records={"train": rows}))}
    assert findings["chat-unknown-role"].examples == [f"{source}:12 message 2: unknown role 'bot'"]
    assert findings["chat-unknown-role"].count == 1
    assert "chat-too-few-examples" not in findings


def test_completion_txt_documents_have_their_first_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "corpus.txt"
    path.write_text("First doc line one.\nline two.\n\n\n   \nSecond doc.\n\nThird\n  indented\n", encoding="utf-8")
    ds = read_completion_texts(str(path))
    assert ds.column_names == ["text", "location"]
    assert ds["location"] == [f"{path}:1", f"{path}:6", f"{path}:8"]
    assert ds["text"] == ["First doc line one.\nline two.", "Second doc.", "Third\n  indented"]


def test_completion_jsonl_keeps_empty_texts(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "c.jsonl", [{"text": "one"}, {"text": ""}, {"text": None}])
    ds = read_completion_texts(source)
    assert ds["text"] == ["one", "", ""]
    assert ds["location"] == [f"{source}:1", f"{source}:2", f"{source}:3"]


def test_completion_csv_wrong_column_suggests_closest(tmp_path: Path) -> None:
    path = tmp_path / "docs.csv"
    with open(path, "w", encoding="utf-8", newline="") as fh:
        csv.writer(fh).writerows([["id", "texts"], ["1", "hello world"]])
    with pytest.raises(DataError) as err:
        read_completion_texts(str(path))
    message = str(err.value)
    assert str(path) in message and "['id', 'texts']" in message and "closest to 'texts'" in message
    ds = read_completion_texts(str(path), text_column="texts")
    assert ds["text"] == ["hello world"] and ds["location"] == [f"{path}:2"]
