"""Readers for LLM fine-tuning data: chat conversations and plain-text completion documents.

Chat data arrives in three common shapes: OpenAI `messages`, ShareGPT `conversations` and Alpaca
`instruction`/`input`/`output`. Everything is converted to OpenAI `messages` form here, because that
is the one form the doctor's chat checks (`checks_chat`) validate and the one chat templates consume.

The readers convert; they do not validate. A row that is missing a field, has an unknown role or does
not match the file's format is converted as faithfully as possible and kept, with its location, so the
doctor can report every bad row with where it is ("chat.jsonl:7 message 2: no content") instead of the
reader failing on the first one or, worse, dropping it silently.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import datasets

from tunelab.data.checks.chat import read_records
from tunelab.data.sources import BUNDLED_DATA, DataError, Row, _decode

CHAT_FORMATS = ("auto", "messages", "alpaca", "sharegpt")
TEXT_SUFFIXES = frozenset({".txt", ".md"})
FORMAT_HINT = ("expected `messages` (OpenAI), `conversations` (ShareGPT) or `instruction`/`output` (Alpaca); "
               "set data.format")

# ShareGPT speaker names seen in published sets -> OpenAI roles. Unknown names are kept as they are,
# so the doctor's chat-unknown-role check names them instead of the reader guessing.
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "system": "system",
    "tool": "tool", "function": "tool", "observation": "tool",
}

_FAQ_PACKAGE = "zaragoza_construction_faq"


# --- bundled chat sets ------------------------------------------------------------------------------

def _construction_faq() -> Iterator[Row]:
    """The English Alpaca pairs of zaragoza-construction-faq.

    Imported here, not at module import, so tunelab works without the package until the set is asked for.
    """
    try:
        import zaragoza_construction_faq as faq
    except ModuleNotFoundError as err:
        if err.name != _FAQ_PACKAGE:
            raise
        raise DataError("bundled set 'construction-faq' needs its package: "
                        "pip install --no-deps zaragoza-construction-faq") from None
    for number, record in enumerate(faq.iter_alpaca(lang="en"), start=1):
        yield f"construction-faq:{number}", record


BUNDLED_CHAT_DATA: dict[str, tuple[Callable[[], Iterator[Row]], str]] = {
    "construction-faq": (_construction_faq,
                         "Swedish construction FAQ in English, 503 Q&A pairs, CC BY 4.0 (zaragoza-construction-faq)"),
}


def describe_bundled_chat() -> str:
    """One line per bundled chat data set."""
    return "\n".join(f"  {name:<16} {desc}" for name, (_, desc) in BUNDLED_CHAT_DATA.items())


# --- format detection and conversion -----------------------------------------------------------------

def detect_format(record: dict[str, Any]) -> str | None:
    """The chat format a record is written in, or None when it has none of the marker keys."""
    if not isinstance(record, dict):
        return None
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    return None


def _check_format(fmt: str) -> None:
    if fmt not in CHAT_FORMATS:
        hint = difflib.get_close_matches(fmt, CHAT_FORMATS, n=1)
        tip = f"; did you mean '{hint[0]}'?" if hint else ""
        raise DataError(f"unknown chat format '{fmt}'; use one of {list(CHAT_FORMATS)}{tip}")


def _nonempty(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _system_message(record: dict[str, Any]) -> list[dict[str, Any]]:
    """A system message from a record-level `system` field (Alpaca and LLaMA-Factory ShareGPT use one)."""
    system = record.get("system")
    return [{"role": "system", "content": system}] if _nonempty(system) else []


def _from_alpaca(record: dict[str, Any]) -> dict[str, Any]:
    """instruction (+ blank line + input) is the user turn, output the assistant turn.

    A missing instruction or output becomes content None, which the doctor reports as
    chat-missing-content at this record's location; `.get` keeps the conversion from raising.
    """
    instruction = record.get("instruction")
    extra = record.get("input")
    user = f"{instruction}\n\n{extra}" if isinstance(instruction, str) and _nonempty(extra) else instruction
    return {"messages": [*_system_message(record),
                         {"role": "user", "content": user},
                         {"role": "assistant", "content": record.get("output")}]}


def _sharegpt_turn(turn: Any) -> Any:
    """{from, value} -> {role, content}; other keys are kept so the doctor can judge them.

    Some ShareGPT exports already use role/content inside `conversations`; those are mapped the same way.
    A turn that is not an object is passed through for the doctor's chat-message-not-object check.
    """
    if not isinstance(turn, dict):
        return turn
    rest = {k: v for k, v in turn.items() if k not in ("from", "value", "role", "content")}
    speaker = turn.get("from", turn.get("role"))
    message: dict[str, Any] = {}
    if speaker is not None:
        message["role"] = SHAREGPT_ROLES.get(speaker.lower(), speaker) if isinstance(speaker, str) else speaker
    message["content"] = turn.get("value", turn.get("content"))
    return {**message, **rest}


def _from_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """Map each turn; a record without a `conversations` list is returned as it is.

    Returned unchanged, it has no `messages`, so the doctor reports it (chat-missing-messages and
    chat-unknown-record-key, which lists the keys it does have) at its location.
    """
    turns = record.get("conversations")
    if not isinstance(turns, list):
        return dict(record)
    return {"messages": [*_system_message(record), *(_sharegpt_turn(t) for t in turns)]}


def to_messages(record: dict[str, Any], fmt: str) -> dict[str, Any]:
    """One raw record in OpenAI form: {"messages": [{"role", "content"}, ...], ...}.

    `messages` records are returned unchanged (a shallow copy), keeping `tools` and the other
    OpenAI record keys. With fmt "auto" the format is detected for this record alone; a record
    with no recognisable format is returned unchanged for the doctor to report.
    """
    _check_format(fmt)
    if fmt == "auto":
        fmt = detect_format(record) or "messages"
    if not isinstance(record, dict):
        return record
    if fmt == "alpaca":
        return _from_alpaca(record)
    if fmt == "sharegpt":
        return _from_sharegpt(record)
    return dict(record)


# --- reading chat files ------------------------------------------------------------------------------

def _raw_chat_rows(source: str) -> list[Row]:
    """(location, raw record) for a bundled chat set or a file; a missing file names the chat sets."""
    if source in BUNDLED_CHAT_DATA:
        return list(BUNDLED_CHAT_DATA[source][0]())
    if source not in BUNDLED_DATA and not Path(source).expanduser().exists():
        hint = difflib.get_close_matches(source, list(BUNDLED_CHAT_DATA), n=1)
        extra = (f"; did you mean the bundled chat set '{hint[0]}'?" if hint
                 else f"; bundled chat sets: {', '.join(BUNDLED_CHAT_DATA)}")
        raise DataError(f"{source}: no such file or folder{extra}")
    return read_records(source)


def _file_format(source: str, rows: list[Row]) -> str:
    """The format of the first record that has one; an error naming the keys when none has."""
    found = next((fmt for _, record in rows if (fmt := detect_format(record))), None)
    if found is None:
        keys = list(rows[0][1]) if isinstance(rows[0][1], dict) else type(rows[0][1]).__name__
        raise DataError(f"{source}: cannot tell the chat format; the first record has keys {keys}. {FORMAT_HINT}.")
    return found


def read_chat_records(source: str, fmt: str = "auto") -> list[Row]:
    """Every record of SOURCE (a file, a datasets folder or a bundled chat set) in OpenAI form.

    The format is one per file: with fmt "auto" it is taken from the first record that has a
    format's keys. Rows that do not match it are still converted and kept, so the doctor reports
    each with its location rather than the row vanishing from training.
    """
    _check_format(fmt)
    rows = _raw_chat_rows(source)
    if not rows:
        raise DataError(f"{source}: no examples found (is the file empty?)")
    if fmt == "auto":
        fmt = _file_format(source, rows)
    return [(location, to_messages(record, fmt)) for location, record in rows]


def _content_text(content: Any) -> str:
    """Message content as one string: None -> "", OpenAI content parts -> their text joined by newlines.

    Non-text parts (images) carry nothing a text model can train on, so they are left out.
    """
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(p.get("text", "")) for p in content
                         if isinstance(p, dict) and p.get("type", "text") == "text")
    return str(content)


def _plain_messages(location: str, record: Any) -> list[dict[str, str]]:
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise DataError(f"{location}: not a valid chat record (no list of message objects); "
                        "run `tunelab data check` to see every bad record and its fix")
    # weight 0 marks an assistant turn that is context only, not trained on (OpenAI's convention)
    return [{"role": str(m.get("role", "")), "content": _content_text(m.get("content")),
             "weight": 0 if m.get("weight") == 0 else 1} for m in messages]


def chat_dataset(rows: list[Row]) -> datasets.Dataset:
    """Rows (already passed by the doctor) as a Dataset of `messages` and `location`.

    Only role, content and weight are kept, so every row has the same Arrow schema; content
    None (an assistant tool call) becomes "". This assumes valid rows: a row without a message list
    is an error pointing at the doctor rather than a confusing Arrow failure.
    """
    features = datasets.Features({
        "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string"),
                      "weight": datasets.Value("int8")}],
        "location": datasets.Value("string"),
    })
    return datasets.Dataset.from_dict(
        {"messages": [_plain_messages(loc, rec) for loc, rec in rows], "location": [loc for loc, _ in rows]},
        features=features,
    )


# --- completion (plain-text continuation) ------------------------------------------------------------

def _text_documents(path: Path) -> Iterator[tuple[int, str]]:
    """(first line number, text) for each run of non-blank lines; blank means empty or whitespace only.

    Line breaks are normalised first (\\r\\n, \\r) so numbers match what an editor shows; str.splitlines
    would also split on form feeds and Unicode separators and shift them.
    """
    lines = _decode(path).replace("\r\n", "\n").replace("\r", "\n").split("\n")
    start, block = 0, []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            start = start or number
            block.append(line)
        elif block:
            yield start, "\n".join(block)
            start, block = 0, []
    if block:
        yield start, "\n".join(block)


def _completion_rows(source: str, text_column: str) -> Iterator[tuple[str, str]]:
    """(location, text) from a table-like source; the column is checked on the first row."""
    rows = read_records(source)
    if rows and text_column not in rows[0][1]:
        have = list(rows[0][1])
        hint = difflib.get_close_matches(text_column, have, n=1)
        tip = f"; '{text_column}' is closest to '{hint[0]}'" if hint else ""
        raise DataError(f"{source}: missing column '{text_column}'; the data has {have}. "
                        f"Set data.text_column in the spec{tip}.")
    for location, record in rows:
        text = record.get(text_column)
        yield location, "" if text is None else str(text)


def read_completion_texts(source: str, text_column: str = "text") -> datasets.Dataset:
    """Plain texts to continue (completion fine-tuning) as a Dataset of `text` and `location`.

    .txt and .md files hold documents separated by blank lines, each located at its first line;
    other sources are read by column. Empty texts are kept for the doctor's too-short check.
    """
    path = Path(source).expanduser()
    if path.suffix.lower() in TEXT_SUFFIXES and path.is_file():
        pairs = [(f"{path}:{line}", text) for line, text in _text_documents(path)]
    else:
        pairs = list(_completion_rows(source, text_column))
    if not pairs:
        raise DataError(f"{source}: no texts found (is the file empty?)")
    return datasets.Dataset.from_dict({"text": [t for _, t in pairs], "location": [loc for loc, _ in pairs]},
                                      features=datasets.Features({"text": datasets.Value("string"),
                                                                  "location": datasets.Value("string")}))
