"""Chat rendering with the model's own chat template, and the loss mask on assistant tokens.

Training and inference must see the same text, so a conversation is rendered by the tokenizer's chat
template (`tokenizer.apply_chat_template`), never by a hand-written format. Which characters of that
text are the assistant's is found by *prefix rendering*, which works for any template whose renderings
grow by appending (ChatML, Llama-3, Mistral, Gemma, Zephyr, ...):

    full   = render(messages)
    before = render(messages[:i], add_generation_prompt=True)   # everything up to the reply
    upto   = render(messages[:i + 1])                           # ... and the reply itself

`upto[len(before):]`, with trailing whitespace removed, is what the model must write for message i: its
content *and* the template's end-of-turn marker (`<|im_end|>`, `<|eot_id|>`, `</s>`, `<end_of_turn>`), so
the model learns to stop. `full` is tokenized once, with offsets, and a token is trained when it starts
inside such a span. A template that re-renders earlier turns (drops old reasoning, for instance) breaks the
prefix property; that is detected and reported, never silently mis-masked.

`render_prompt` renders exactly the training prefix of the final reply, so generation at evaluation and
inference time uses the template the model was trained on.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

IGNORE_INDEX = -100
TRAIN_ON = ("all-assistant", "last-assistant", "all")

NO_TEMPLATE = ("the base model has no chat template; set data.chat_template: chatml (or a Jinja template string)")


class TemplateError(ValueError):
    """A chat template is missing, unusable for masking, or rejects a conversation; the message says the fix."""


# Templates for base models that ship without one. Each needs the listed strings to be single tokens:
# `ensure_chat_template` adds the missing ones as special tokens (the caller resizes the embeddings).
BUILTIN_TEMPLATES: dict[str, str] = {
    "chatml": (
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message['role'] + '\\n' }}"
        "{{- message['content'] if message['content'] is string else '' }}"
        "{{- '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
    ),
    "llama3": (
        "{{- bos_token if bos_token else '' }}"
        "{%- for message in messages %}"
        "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
        "{{- (message['content'] if message['content'] is string else '') | trim }}"
        "{{- '<|eot_id|>' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
    ),
}
BUILTIN_SPECIAL_TOKENS: dict[str, list[str]] = {
    "chatml": ["<|im_start|>", "<|im_end|>"],
    "llama3": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
}


@dataclass
class Rendered:
    """One tokenized example. `input_ids`/`labels` are cut to max_length; `text` and `spans` describe the
    whole rendering (spans are the character ranges of `text` that are trained)."""

    input_ids: list[int]
    labels: list[int]
    text: str
    spans: list[tuple[int, int]]
    truncated: int = 0
    offsets: list[tuple[int, int]] = field(default_factory=list, repr=False)  # per kept token, into `text`

    @property
    def trained_tokens(self) -> int:
        return sum(label != IGNORE_INDEX for label in self.labels)


# --- templates ---------------------------------------------------------------------------------------

def ensure_chat_template(tokenizer: Any, template: str | None) -> int:
    """Make sure TOKENIZER has a chat template. Return how many tokens were added to its vocabulary.

    None keeps the tokenizer's own template (TemplateError when it has none); a name from
    BUILTIN_TEMPLATES or a Jinja template string is installed on `tokenizer.chat_template`. A built-in
    template's control tokens are added as special tokens when the tokenizer lacks them; a non-zero return
    means the model's embeddings must be resized (`model.resize_token_embeddings(len(tokenizer))`).
    """
    if template is None:
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError(NO_TEMPLATE)
        return 0
    if not isinstance(template, str) or not template.strip():
        raise TemplateError(f"data.chat_template must be a template name ({', '.join(BUILTIN_TEMPLATES)}) "
                            "or a Jinja template string")
    if template in BUILTIN_TEMPLATES:
        source, needed = BUILTIN_TEMPLATES[template], BUILTIN_SPECIAL_TOKENS.get(template, [])
    elif "{{" in template or "{%" in template:
        source, needed = template, []
        _check_jinja(template)
    else:
        raise TemplateError(f"unknown chat template '{template}'; set data.chat_template to one of "
                            f"{', '.join(BUILTIN_TEMPLATES)} or to a Jinja template string")
    added = _add_control_tokens(tokenizer, needed)
    tokenizer.chat_template = source
    return added


def _check_jinja(source: str) -> None:
    import jinja2

    try:
        jinja2.Environment().parse(source)
    except jinja2.TemplateSyntaxError as err:
        raise TemplateError(f"data.chat_template is not a valid Jinja template (line {err.lineno}: {err.message}); "
                            "fix the template or use a built-in one: " + ", ".join(BUILTIN_TEMPLATES)) from None


def _is_single_token(tokenizer: Any, token: str) -> bool:
    return len(tokenizer.encode(token, add_special_tokens=False)) == 1


def _add_control_tokens(tokenizer: Any, tokens: Sequence[str]) -> int:
    missing = [t for t in tokens if not _is_single_token(tokenizer, t)]
    if not missing:
        return 0
    before = len(tokenizer)
    # transformers 5 calls the list `extra_special_tokens` (`additional_special_tokens` is translated) and by
    # default *replaces* the existing list, which would un-flag the tokenizer's own extra special tokens.
    try:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)
    except TypeError:  # transformers 4
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return len(tokenizer) - before


# --- rendering ---------------------------------------------------------------------------------------

def _clean(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages as the template sees them: without tunelab's training-only `weight` key."""
    return [{k: v for k, v in m.items() if k != "weight"} for m in messages]


def _require_template(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        raise TemplateError(NO_TEMPLATE)


def _apply(tokenizer: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = False) -> str:
    import jinja2

    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    except jinja2.TemplateError as err:
        roles = "/".join(str(m.get("role")) for m in messages)
        raise TemplateError(f"the chat template rejected a conversation ({roles}): {err}. Fix the conversation "
                            "(role order, roles the template supports) or set data.chat_template to a template "
                            "that accepts it") from None
    if not isinstance(text, str):  # a batched/dict return would mean an unexpected transformers API
        raise TemplateError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, expected text")
    return text


def _divergence(a: str, b: str, context: int = 30) -> str:
    """Where A and B first differ, as a short quoted excerpt of each."""
    n = next((k for k, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    lo = max(0, n - context)
    return f"at character {n}: {a[lo:n + context]!r} vs {b[lo:n + context]!r}"


def _not_prefix(i: int, detail: str, train_on: str) -> TemplateError:
    hint = ("set data.train_on: last-assistant (trains only the final reply, which needs no earlier turn to "
            "render the same) or use another chat template" if train_on != "last-assistant"
            else "use another chat template (data.chat_template: chatml, or a Jinja template string)")
    return TemplateError(f"the chat template does not render conversations as growing prefixes, so the tokens of "
                         f"assistant message {i} cannot be located: it re-renders earlier turns, or its generation "
                         f"prompt differs from how it starts an assistant turn ({detail}); {hint}")


def _reply_start(tokenizer: Any, messages: list[dict[str, Any]], i: int, upto: str, train_on: str) -> int:
    """Character offset in UPTO where assistant message I (its last message) begins."""
    if i > 0:
        before = _apply(tokenizer, messages[:i], add_generation_prompt=True)
        if not upto.startswith(before):
            raise _not_prefix(i, "the prompt rendering is not a prefix of the rendering with the reply, "
                              + _divergence(before, upto), train_on)
        return len(before)
    # An assistant-first conversation: messages[:0] cannot be rendered (transformers refuses an empty
    # conversation), so learn the generation prompt from a one-message conversation and find it in UPTO.
    try:
        probe = [{"role": "user", "content": "x"}]
        with_prompt, without = _apply(tokenizer, probe, True), _apply(tokenizer, probe, False)
        header = with_prompt[len(without):] if with_prompt.startswith(without) else ""
    except TemplateError:
        header = ""
    if header and (k := upto.find(header)) >= 0:
        return k + len(header)
    content = messages[i].get("content")
    if isinstance(content, str) and content.strip() and (k := upto.rfind(content.strip())) >= 0:
        return k
    raise TemplateError("cannot locate the opening assistant message in the rendered conversation (the template "
                        "has no generation prompt and the message has no text); start the conversation with a "
                        "user (or system) message")


def _trained_mask(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[bool]:
    """A token is trained when it starts inside a span, or straddles a span's start (it carries reply text)."""
    return [any(a <= s < b or s < a < e for a, b in spans) for s, e in offsets]


def render_chat(tokenizer: Any, messages: Sequence[dict[str, Any]], train_on: str = "all-assistant",
                max_length: int | None = None) -> Rendered:
    """Render MESSAGES with the tokenizer's chat template; label the trained tokens, -100 the rest.

    train_on: "all-assistant" (every assistant turn except those with `weight: 0`), "last-assistant" (the
    final assistant turn, unless it has `weight: 0`), "all" (every token). Tokens past MAX_LENGTH are cut
    from the right and counted in `truncated`. A conversation with nothing to train comes back with every
    label -100 (`trained_tokens == 0`); the caller decides whether to drop it.
    """
    if train_on not in TRAIN_ON:
        raise ValueError(f"train_on must be one of {', '.join(TRAIN_ON)}, got {train_on!r}")
    if not messages:
        raise TemplateError("empty conversation: there is nothing to render; drop the row")
    _require_template(tokenizer)
    msgs = _clean(messages)
    full = _apply(tokenizer, msgs)

    if train_on == "all":
        spans = [(0, len(full))]
    else:
        replies = [i for i, m in enumerate(messages) if m.get("role") == "assistant"]
        if train_on == "last-assistant":
            replies = replies[-1:]
        spans = []
        for i in replies:
            if messages[i].get("weight", 1) == 0:
                continue
            upto = full if i == len(msgs) - 1 else _apply(tokenizer, msgs[:i + 1])
            if not full.startswith(upto):
                raise _not_prefix(i, "the conversation up to this message is not a prefix of the whole "
                                  "conversation, " + _divergence(upto, full), train_on)
            start = _reply_start(tokenizer, msgs, i, upto, train_on)
            end = len(upto[start:].rstrip()) + start
            if end > start:
                spans.append((start, end))

    try:
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
    except NotImplementedError:
        raise TemplateError("masking assistant tokens needs a fast tokenizer (offsets); "
                            "load the model's tokenizer.json (AutoTokenizer with use_fast=True)") from None
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    trained = [True] * len(ids) if train_on == "all" else _trained_mask(offsets, spans)
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained)]
    return _cut(Rendered(ids, labels, full, spans, 0, offsets), max_length)


def _cut(rendered: Rendered, max_length: int | None) -> Rendered:
    if max_length is not None and len(rendered.input_ids) > max_length:
        rendered.truncated = len(rendered.input_ids) - max_length
        rendered.input_ids = rendered.input_ids[:max_length]
        rendered.labels = rendered.labels[:max_length]
        rendered.offsets = rendered.offsets[:max_length]
    return rendered


def prompt_and_reference(messages: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """(the messages before the final assistant turn, that turn's content), for generation-based evaluation."""
    if not messages or messages[-1].get("role") != "assistant":
        raise ValueError("the conversation does not end with an assistant message, so it has no reference reply")
    content = messages[-1].get("content")
    return list(messages[:-1]), content if isinstance(content, str) else ""


def render_prompt(tokenizer: Any, messages: Sequence[dict[str, Any]]) -> list[int]:
    """Token ids of the prompt for the final reply: MESSAGES without a final assistant message, rendered with
    the generation prompt. This is exactly the training prefix of that reply (same template, no extra BOS)."""
    _require_template(tokenizer)
    msgs = _clean(messages)
    if msgs and msgs[-1].get("role") == "assistant":
        msgs = msgs[:-1]
    if not msgs:
        raise ValueError("no messages before the final assistant reply, so there is no prompt to generate from")
    text = _apply(tokenizer, msgs, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def render_text(tokenizer: Any, text: str, max_length: int | None = None) -> Rendered:
    """Plain completion: the tokenizer's own special tokens (BOS), EOS appended, every token trained."""
    enc = tokenizer(text, add_special_tokens=True, return_offsets_mapping=True)
    ids = list(enc["input_ids"])
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
        offsets.append((len(text), len(text) + len(tokenizer.eos_token)))
        text = text + tokenizer.eos_token
    return _cut(Rendered(ids, list(ids), text, [(0, len(text))], 0, offsets), max_length)


# --- preview -----------------------------------------------------------------------------------------

def _token_pieces(tokenizer: Any, rendered: Rendered) -> list[str]:
    """The text of each kept token; the whitespace a token's offsets skip goes with the token after it."""
    if len(rendered.offsets) != len(rendered.input_ids):  # built without offsets: decode token by token
        return [tokenizer.decode([t], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                for t in rendered.input_ids]
    special = set(getattr(tokenizer, "all_special_ids", []))
    pieces, cursor = [], 0
    for token, (start, end) in zip(rendered.input_ids, rendered.offsets):
        if end <= start:
            # zero width: a special token the tokenizer added (a BOS), shown as itself, or a whitespace token
            # whose offsets were trimmed, whose text goes with the next token
            name = tokenizer.convert_ids_to_tokens(token) if token in special else ""
            pieces.append("" if rendered.text.startswith(name, start) else name)
            continue
        pieces.append(rendered.text[cursor:end] if end > cursor else "")
        cursor = max(cursor, end)
    return pieces


def preview(tokenizer: Any, rendered: Rendered, color: bool = True) -> str:
    """The rendered text with the trained tokens marked (rich markup, or ⟦ ⟧ without color) and a token count."""
    from rich.markup import escape

    pieces = _token_pieces(tokenizer, rendered)
    out = []
    for trained, group in itertools.groupby(zip(pieces, rendered.labels), key=lambda p: p[1] != IGNORE_INDEX):
        text = "".join(piece for piece, _ in group)
        if color:
            text = escape(text)
            out.append(f"[bold green]{text}[/]" if trained and text else text)
        else:
            out.append(f"⟦{text}⟧" if trained else text)
    body = "".join(out)
    if not body.endswith("\n"):
        body += "\n"
    return (body + f"tokens: {len(rendered.input_ids)} "
            f"(trained {rendered.trained_tokens}, truncated {rendered.truncated})")
