"""Chat-format doctor checks: one fixture per OpenAI rule, each found with its count and location."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import tunelab.data.checks.chat
from tunelab.data.checks.chat import CHAT_CHECKS, read_records
from tunelab.data.doctor import CHECKS, DoctorContext, Finding

GOOD = [
    {"messages": [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi there"},
                  {"role": "assistant", "content": "Hello.", "weight": 1}]},
    {"messages": [{"role": "user", "content": "Weather in Oslo?"},
                  {"role": "assistant", "content": None,
                   "tool_calls": [{"id": "c1", "type": "function",
                                   "function": {"name": "weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                  {"role": "tool", "tool_call_id": "c1", "content": "rain"},
                  {"role": "assistant", "content": "It rains."}],
     "tools": [{"type": "function", "function": {"name": "weather", "parameters": {}}}],
     "parallel_tool_calls": False},
    {"messages": [{"role": "user", "content": [{"type": "text", "text": "What is this?"},
                                               {"type": "image_url", "image_url": {"url": "http://x/a.png"}}]},
                  {"role": "assistant", "content": "A cat.", "name": "bot1"}]},
]


def write_jsonl(path: Path, records: list[Any]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def valid(n: int = 10) -> list[dict[str, Any]]:
    return [GOOD[i % len(GOOD)] for i in range(n)]


def run_chat(records: dict[str, list[tuple[str, dict[str, Any]]]], **kw: Any) -> dict[str, Finding]:
    """Only the chat checks (the classification checks would complain about the absent text splits)."""
    ctx = DoctorContext(splits={}, labels=[], records=records, **kw)
    found: dict[str, Finding] = {}
    for name in CHAT_CHECKS:
        result = CHECKS[name][1](ctx)
        for f in result if isinstance(result, list) else ([result] if result else []):
            found[f.check] = f
    return found


def test_module_registers_its_checks() -> None:
    assert tunelab.data.checks.chat.__name__ in CHECKS["chat-unknown-role"][1].__module__
    assert all(name in CHECKS for name in CHAT_CHECKS)


def test_valid_chat_data_has_no_errors_or_warnings(tmp_path: Path) -> None:
    found = run_chat({"train": read_records(write_jsonl(tmp_path / "chat.jsonl", valid()))})
    assert list(found) == ["chat-token-counts"]
    assert found["chat-token-counts"].severity == "info"


@pytest.mark.parametrize("bad, check, example", [
    ({"prompt": "hi"}, "chat-missing-messages", "chat.jsonl:11: no 'messages'"),
    ({"messages": "hi"}, "chat-missing-messages", "chat.jsonl:11: 'messages' is str, not a list"),
    ({"messages": ["hi", {"role": "assistant", "content": "x"}]}, "chat-message-not-object",
     "chat.jsonl:11 message 1: a str, not an object"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"},
                   {"role": "assistant", "content": "c"}]}, "chat-unknown-role",
     "chat.jsonl:11 message 2: unknown role 'bot'"),
    ({"messages": [{"content": "a"}, {"role": "assistant", "content": "c"}]}, "chat-unknown-role",
     "chat.jsonl:11 message 1: no role"),
    ({"messages": [{"role": "user"}, {"role": "assistant", "content": "c"}]}, "chat-missing-content",
     "chat.jsonl:11 message 1: no content"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": None}]},
     "chat-missing-content", "chat.jsonl:11 message 2: no content"),
    ({"messages": [{"role": "user", "content": 42}, {"role": "assistant", "content": "c"}]},
     "chat-missing-content", "chat.jsonl:11 message 1: content is int, not a string"),
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "a"}]}, "chat-no-assistant",
     "chat.jsonl:11: roles ['system', 'user']"),
    ({"messages": [{"role": "user", "content": "a", "lang": "en"}, {"role": "assistant", "content": "c"}]},
     "chat-unknown-message-key", "chat.jsonl:11 message 1: unknown key(s) ['lang']"),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "c"}], "id": 7},
     "chat-unknown-record-key", "chat.jsonl:11: unknown key(s) ['id']"),
])
def test_each_rule_is_found_with_count_and_location(tmp_path: Path, bad: dict[str, Any], check: str,
                                                    example: str) -> None:
    records = read_records(write_jsonl(tmp_path / "chat.jsonl", valid() + [bad, bad]))
    found = run_chat({"train": records})
    finding = found[check]
    assert finding.severity == "error" and finding.count == 2
    assert finding.examples[0].endswith(example)
    assert finding.examples[1].endswith(example.replace("chat.jsonl:11", "chat.jsonl:12"))


def test_rules_are_separate_findings_and_examples_are_capped(tmp_path: Path) -> None:
    bad = {"messages": [{"role": "bot", "content": "a", "x": 1}], "meta": {}}
    found = run_chat({"train": read_records(write_jsonl(tmp_path / "chat.jsonl", valid() + [bad] * 8))})
    for check in ("chat-unknown-role", "chat-no-assistant", "chat-unknown-message-key", "chat-unknown-record-key"):
        assert found[check].count == 8 and len(found[check].examples) == 5
    assert "... and 3 more" in found["chat-unknown-role"].render()
    assert "chat-missing-content" not in found and "chat-too-few-examples" not in found


def test_too_few_examples_is_a_warning_counted_on_train(tmp_path: Path) -> None:
    train = read_records(write_jsonl(tmp_path / "train.jsonl", valid(3)))
    val = read_records(write_jsonl(tmp_path / "val.jsonl", valid(20)))
    found = run_chat({"train": train, "validation": val})
    assert found["chat-too-few-examples"].severity == "warning"
    assert found["chat-too-few-examples"].details["examples"] == 3
    assert "chat-too-few-examples" not in run_chat({"train": val})


def test_checks_skip_data_that_is_not_chat(tmp_path: Path) -> None:
    records = read_records(write_jsonl(tmp_path / "cls.jsonl", [{"text": "a", "label": "x"}] * 3))
    assert run_chat({"train": records}) == {}
    assert run_chat({}) == {}


def test_token_counts_whitespace_approximation(tmp_path: Path) -> None:
    msgs = lambda n: {"messages": [{"role": "user", "content": "w " * n}, {"role": "assistant", "content": "ok"}]}
    records = read_records(write_jsonl(tmp_path / "chat.jsonl", [msgs(n) for n in range(1, 11)]))
    f = run_chat({"train": records}, max_length=10)["chat-token-counts"]
    # words: "user:" + n + "assistant:" + "ok" = n + 3 -> 4..13
    assert f.details | {"splits": None} == {
        "method": "whitespace", "examples": 10, "min": 4, "median": 8.5, "p95": 13, "max": 13, "total": 85,
        "max_length": 10, "over_max_length": 3, "splits": None}
    assert "whitespace approximation" in f.message and f.count == 3
    assert f.examples[0].endswith("chat.jsonl:8: 11 words")
    assert f.details["splits"] == {"train": {"examples": 10, "total": 85, "max": 13}}


class CharTokenizer:
    """One token per character; a chat template that wraps each turn, like a real one adds markers."""

    def __init__(self, template: bool) -> None:
        self.chat_template = "fake" if template else None

    def apply_chat_template(self, messages: list[dict[str, Any]], tools: Any = None, tokenize: bool = True) -> str:
        if any(m["role"] == "system" for m in messages):
            raise ValueError("System role not supported")  # like templates that reject some turns
        return "".join(f"<{m['role']}>{m['content']}</>" for m in messages)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        return {"input_ids": [ord(c) for c in text] + ([0, 0] if add_special_tokens else [])}


def test_token_counts_use_the_chat_template_then_fall_back(tmp_path: Path) -> None:
    plain = {"messages": [{"role": "user", "content": "abc"}, {"role": "assistant", "content": "de"}]}
    system = {"messages": [{"role": "system", "content": "s"}, *plain["messages"]]}
    records = read_records(write_jsonl(tmp_path / "chat.jsonl", [plain, system]))
    f = run_chat({"train": records}, tokenizer=CharTokenizer(template=True))["chat-token-counts"]
    templated = len("<user>abc</><assistant>de</>")
    concatenated = len("system: s\nuser: abc\nassistant: de") + 2
    assert (f.details["min"], f.details["max"]) == (templated, concatenated)
    assert f.details["method"] == "chat-template+concatenated" and "words" not in f.message
    f = run_chat({"train": records[:1]}, tokenizer=CharTokenizer(template=False))["chat-token-counts"]
    assert f.details["total"] == len("user: abc\nassistant: de") + 2 and f.details["method"] == "concatenated"


def test_read_records_json_array_and_parquet_nulls(tmp_path: Path) -> None:
    (tmp_path / "chat.json").write_text(json.dumps(valid(2)), encoding="utf-8")
    rows = read_records(str(tmp_path / "chat.json"))
    assert [loc.rsplit(" ", 2)[1:] for loc, _ in rows] == [["record", "0"], ["record", "1"]]
    # Parquet gives every message every struct field, absent ones as null: not unknown keys
    table = pa.Table.from_pylist([{"messages": [{"role": "user", "content": "a"},
                                                {"role": "assistant", "content": "b", "weight": 1}]}] * 10)
    pq.write_table(table, tmp_path / "chat.parquet")
    found = run_chat({"train": read_records(str(tmp_path / "chat.parquet"))})
    assert list(found) == ["chat-token-counts"]
