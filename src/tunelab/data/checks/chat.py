"""Doctor checks for chat (LLM fine-tuning) data in OpenAI's `messages` format.

OpenAI's fine-tuning endpoint rejects a whole file for one bad line, and other trainers fail late or
silently drop turns, so the rules are checked up front, one Finding per rule, each pointing at the
record (`chat.jsonl:7`) and the message (`message 3`, counted from 1 like the line numbers).

The checks run only when some record in `ctx.records` has a `messages` key: that is what marks the
data as chat data; classification records never have it, and ShareGPT-style files are mapped to
`messages` by the caller before the doctor sees them.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterator
from typing import Any

from tunelab.data.findings import DoctorContext, Finding, Severity, register_check, sample
from tunelab.data.sources import Row, _rows

ROLES = frozenset({"system", "user", "assistant", "tool", "function"})
MESSAGE_KEYS = frozenset({"role", "content", "name", "weight", "tool_calls", "tool_call_id", "function_call"})
RECORD_KEYS = frozenset({"messages", "tools", "functions", "parallel_tool_calls"})
MIN_EXAMPLES = 10  # OpenAI refuses a training file with fewer examples
CHAT_CHECKS = ("chat-missing-messages", "chat-message-not-object", "chat-unknown-role", "chat-missing-content",
               "chat-no-assistant", "chat-unknown-message-key", "chat-unknown-record-key",
               "chat-too-few-examples", "chat-token-counts")


def read_records(source: str) -> list[Row]:
    """Every (location, record) of a chat file, for `DoctorContext.records`.

    JSONL, CSV/TSV, Parquet and datasets folders go through the shared readers, so locations match
    the classification checks. A `.json` file holding one JSON array (the form many published chat
    sets use) is read as that array, located as `file.json record N` (N from 0, like Parquet rows).
    """
    return list(_rows(source))


def _chat_records(ctx: DoctorContext) -> list[tuple[str, str, dict[str, Any]]] | None:
    """(split, location, record) for every record, or None when nothing marks the data as chat."""
    rows = [(split, loc, rec) for split, recs in ctx.records.items() for loc, rec in recs]
    if not any(isinstance(rec, dict) and "messages" in rec for _, _, rec in rows):
        return None
    return rows


def _present_keys(obj: dict[str, Any]) -> list[str]:
    """Keys with a value: Parquet and datasets fill absent struct fields with null, which is not a key."""
    return [k for k, v in obj.items() if v is not None]


def _messages(rec: Any) -> list[Any] | None:
    value = rec.get("messages") if isinstance(rec, dict) else None
    return value if isinstance(value, list) else None


def _each_message(ctx: DoctorContext) -> Iterator[tuple[str, int, dict[str, Any]]]:
    """(location, 1-based index, message) for every message that is an object, in well-formed records."""
    for _, loc, rec in _chat_records(ctx) or []:
        for i, msg in enumerate(_messages(rec) or [], start=1):
            if isinstance(msg, dict):
                yield loc, i, msg


def _finding(check: str, severity: Severity, bad: list[tuple[str, str]], what: str, fix: str) -> Finding | None:
    """A finding for BAD, (record location, what is wrong there) pairs; every record is in its locations."""
    if not bad:
        return None
    return Finding(check, severity, f"{len(bad)} {what}", len(bad), fix, sample([f"{loc}{why}" for loc, why in bad]),
                   locations=[loc for loc, _ in bad])


@register_check("chat-missing-messages", "error")
def missing_messages(ctx: DoctorContext) -> Finding | None:
    rows = _chat_records(ctx)
    if rows is None:
        return None
    bad = []
    for _, loc, rec in rows:
        value = rec.get("messages") if isinstance(rec, dict) else None
        if value is None:
            bad.append((loc, ": no 'messages'"))
        elif not isinstance(value, list):
            bad.append((loc, f": 'messages' is {type(value).__name__}, not a list"))
    return _finding("chat-missing-messages", "error", bad, "record(s) have no 'messages' list",
                    "give every record a 'messages' list of {role, content} objects")


@register_check("chat-message-not-object", "error")
def message_not_object(ctx: DoctorContext) -> Finding | None:
    bad = [(loc, f" message {i}: a {type(msg).__name__}, not an object")
           for _, loc, rec in _chat_records(ctx) or []
           for i, msg in enumerate(_messages(rec) or [], start=1) if not isinstance(msg, dict)]
    return _finding("chat-message-not-object", "error", bad, "message(s) are not JSON objects",
                    'write each message as {"role": ..., "content": ...}')


@register_check("chat-unknown-role", "error")
def unknown_role(ctx: DoctorContext) -> Finding | None:
    bad = [(loc, f" message {i}: " + (f"unknown role {msg['role']!r}" if "role" in msg else "no role"))
           for loc, i, msg in _each_message(ctx) if not (isinstance(msg.get("role"), str) and msg["role"] in ROLES)]
    return _finding("chat-unknown-role", "error", bad, "message(s) have a missing or unknown role",
                    f"use one of {sorted(ROLES)} (e.g. map 'human' to 'user', 'gpt'/'bot' to 'assistant')")


def _content_ok(msg: dict[str, Any]) -> bool:
    """A string; or a list of typed parts (OpenAI's multimodal form); or, for the assistant, a tool call."""
    content = msg.get("content")
    if isinstance(content, str):
        return True
    if isinstance(content, list) and content and all(isinstance(p, dict) and "type" in p for p in content):
        return True
    tool_call = bool(msg.get("tool_calls") or msg.get("function_call"))
    return content is None and msg.get("role") == "assistant" and tool_call


@register_check("chat-missing-content", "error")
def missing_content(ctx: DoctorContext) -> Finding | None:
    bad = [(loc, f" message {i}: " + ("no content" if msg.get("content") is None
                                      else f"content is {type(msg['content']).__name__}, not a string"))
           for loc, i, msg in _each_message(ctx) if not _content_ok(msg)]
    return _finding("chat-missing-content", "error", bad, "message(s) have missing or non-string content",
                    "give every message a string 'content' (an assistant turn may carry 'tool_calls' instead)")


@register_check("chat-no-assistant", "error")
def no_assistant(ctx: DoctorContext) -> Finding | None:
    bad = [(loc, f": roles {[m.get('role') for m in msgs if isinstance(m, dict)]}")
           for _, loc, rec in _chat_records(ctx) or [] if (msgs := _messages(rec)) is not None
           and not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs)]
    return _finding("chat-no-assistant", "error", bad, "record(s) have no assistant message to learn from",
                    "add the assistant reply the model should produce, or remove the record")


@register_check("chat-unknown-message-key", "error")
def unknown_message_key(ctx: DoctorContext) -> Finding | None:
    bad = [(loc, f" message {i}: unknown key(s) {extra}") for loc, i, msg in _each_message(ctx)
           if (extra := sorted(set(_present_keys(msg)) - MESSAGE_KEYS))]
    return _finding("chat-unknown-message-key", "error", bad, "message(s) have keys the format does not allow",
                    f"keep only {sorted(MESSAGE_KEYS)} in a message; move metadata out of the training file")


@register_check("chat-unknown-record-key", "error")
def unknown_record_key(ctx: DoctorContext) -> Finding | None:
    bad = [(loc, f": unknown key(s) {extra}") for _, loc, rec in _chat_records(ctx) or []
           if isinstance(rec, dict) and (extra := sorted(set(_present_keys(rec)) - RECORD_KEYS))]
    return _finding("chat-unknown-record-key", "error", bad, "record(s) have keys the format does not allow",
                    f"keep only {sorted(RECORD_KEYS)} at the top level of a record")


@register_check("chat-too-few-examples", "warning")
def too_few_examples(ctx: DoctorContext) -> Finding | None:
    """Counts the training split when there is one: the minimum is about what the model learns from."""
    if _chat_records(ctx) is None:
        return None
    split = "train" if "train" in ctx.records else None
    n = len(ctx.records["train"]) if split else sum(len(r) for r in ctx.records.values())
    if n >= MIN_EXAMPLES:
        return None
    where = "the training split has" if split else "the data has"
    return Finding("chat-too-few-examples", "warning",
                   f"{where} {n} example(s); OpenAI requires at least {MIN_EXAMPLES}", 1,
                   "add examples: 50-100 well-chosen chats usually show a clear improvement",
                   details={"examples": n, "minimum": MIN_EXAMPLES})


def _as_text(msg: dict[str, Any]) -> str:
    content = msg.get("content")
    if isinstance(content, list):
        content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    calls = msg.get("tool_calls") or msg.get("function_call")
    extra = f" {json.dumps(calls, ensure_ascii=False)}" if calls else ""
    return f"{msg.get('role', '')}: {content or ''}{extra}"


def _token_count(tokenizer: Any, rec: dict[str, Any], msgs: list[dict[str, Any]]) -> tuple[int, str]:
    """Tokens of one example and how they were counted.

    The chat template is what the trainer will feed the model, so it is preferred; a template that
    rejects the example (many insist on strict user/assistant alternation) falls back to role + content.
    """
    plain = "\n".join(_as_text(m) for m in msgs)
    if tokenizer is None:
        return len(plain.split()), "whitespace"
    if getattr(tokenizer, "chat_template", None):
        try:
            text = tokenizer.apply_chat_template(msgs, tools=rec.get("tools"), tokenize=False)
            return len(tokenizer(text, add_special_tokens=False)["input_ids"]), "chat-template"
        except Exception:  # noqa: BLE001 - templates raise anything (jinja errors, their own ValueErrors)
            pass  # deliberate: count role + content below, as the finding's details say
    return len(tokenizer(plain)["input_ids"]), "concatenated"


@register_check("chat-token-counts", "info")
def token_counts(ctx: DoctorContext) -> Finding | None:
    """Length statistics: they set max_length, the training cost, and show examples that would be cut."""
    rows = _chat_records(ctx)
    if rows is None:
        return None
    counts: list[tuple[str, str, int]] = []
    methods: set[str] = set()
    for split, loc, rec in rows:
        msgs = _messages(rec)
        if msgs is None or not all(isinstance(m, dict) for m in msgs):
            continue
        n, method = _token_count(ctx.tokenizer, rec, msgs)
        counts.append((split, loc, n))
        methods.add(method)
    if not counts:
        return None
    ns = sorted(n for _, _, n in counts)
    p95 = ns[min(len(ns) - 1, max(0, -(-95 * len(ns) // 100) - 1))]  # nearest rank
    word = "tokens" if ctx.tokenizer is not None else "words"
    over_at = [(loc, n) for _, loc, n in counts if ctx.max_length and n > ctx.max_length]
    over = [f"{loc}: {n} {word}" for loc, n in over_at]
    per_split = {s: {"examples": len(v), "total": sum(v), "max": max(v)}
                 for s in dict.fromkeys(s for s, _, _ in counts)
                 for v in [[n for t, _, n in counts if t == s]]}
    unit = "tokens" if ctx.tokenizer is not None else "words (whitespace approximation of tokens; no tokenizer given)"
    message = (f"{unit} per example over {len(ns)} example(s): min {ns[0]}, median {statistics.median(ns):g}, "
               f"p95 {p95}, max {ns[-1]}; total {sum(ns)}")
    if ctx.max_length:
        message += f"; {len(over)} example(s) exceed max_length {ctx.max_length}"
    return Finding("chat-token-counts", "info", message, len(over),
                   "raise max_length, or shorten or split the long examples (their ends are cut in training)",
                   sample(over), locations=[loc for loc, _ in over_at],
                   details={"method": "+".join(sorted(methods)), "examples": len(ns), "min": ns[0],
                            "median": statistics.median(ns), "p95": p95, "max": ns[-1], "total": sum(ns),
                            "max_length": ctx.max_length, "over_max_length": len(over), "splits": per_split})
