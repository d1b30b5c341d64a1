"""Turning a request into checked inputs: the body (size-capped) as JSON, base64 images, text lists,
tokenisation within the limits, sampling parameters, prompt checks, and cutting text at stop strings.

Each helper raises `APIError` (an OpenAI-style 4xx naming the offending parameter) or, for images, a
ValueError the caller names; none of them touches a model's thread or the request log.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from fastapi import Request

from tunelab.serve.errors import APIError
from tunelab.serve.middleware import _too_large
from tunelab.serve.models import ClassifierModel, GeneratorModel
from tunelab.serve.settings import ServeSettings


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")  # how a surrogate can reach a string: a \uD800-\uDFFF escape


def _parse_json(raw: bytes) -> Any:
    """RAW (UTF-8) as JSON; refuses NaN/Infinity and any string holding a lone surrogate (400 naming where)."""
    if not raw.strip():
        raise APIError(400, "the request body is empty; send a JSON object", code="invalid_json")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise APIError(400, f"the request body is not UTF-8 (byte {err.start}); JSON bodies must be UTF-8 "
                       "(RFC 8259)", code="invalid_json") from None
    try:
        body = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:
        raise APIError(400, f"the request body is not valid JSON ({str(err)[:200]})", code="invalid_json") from None
    if _SURROGATE_ESCAPE.search(text):  # rare: only then walk the body (pairs decode to one valid character)
        _check_unicode(body, [])
    return body


def _check_unicode(value: Any, path: list[str]) -> None:
    """Refuse a lone UTF-16 surrogate (JSON ``"\\ud800"`` unpaired) anywhere in VALUE: it is not a character,
    cannot be encoded as UTF-8, and would fail the tokenizer, the request log and any reply that echoes it."""
    def refuse(where: list[str], text: str, what: str) -> None:
        at = next(i for i, ch in enumerate(text) if "\ud800" <= ch <= "\udfff")
        param = ".".join(where) or None
        raise APIError(400, f"invalid '{param or 'body'}': {what} holds a lone UTF-16 surrogate "
                       f"(\\u{ord(text[at]):04x} at character {at}), which is not valid Unicode; send well-formed "
                       "text (a surrogate must be paired: \\ud83d\\ude00)", param=param, code="invalid_unicode")

    stack: list[tuple[Any, list[str]]] = [(value, path)]
    while stack:  # iterative: a deeply nested body must not exhaust the stack
        item, where = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    refuse(where, item, "the text")
        elif isinstance(item, list):
            stack.extend((v, [*where, str(i)]) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            for key, v in reversed(list(item.items())):
                try:
                    key.encode("utf-8")
                except UnicodeEncodeError:
                    refuse(where, key, "a key")
                stack.append((v, [*where, key[:100]]))


def _decode_image(value: str, mode: str, max_pixels: int) -> tuple[Any, bytes]:
    """(PIL image, raw bytes) from base64 (or a data: URL). Never treats the value as a path."""
    from PIL import Image

    from tunelab.vision.transforms import load_image

    text = value.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise ValueError("a data: URL must be base64-encoded (data:image/png;base64,...)")
    try:
        data = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not valid base64; send the image file's bytes base64-encoded (file paths are not read)") from None
    if not data:
        raise ValueError("the image is empty")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            w, h = probe.size
    except Exception as err:  # noqa: BLE001 - Pillow raises many kinds of error for bad bytes
        raise ValueError(f"not a readable image ({type(err).__name__})") from None
    if w * h > max_pixels:
        raise ValueError(f"image of {w}x{h} pixels is over this server's limit of {max_pixels} pixels")
    try:
        return load_image(io.BytesIO(data), mode), data
    except Exception as err:  # noqa: BLE001
        raise ValueError(f"not a readable image ({type(err).__name__})") from None


def _text_list(value: str | list[str], param: str, settings: ServeSettings) -> list[str]:
    texts = [value] if isinstance(value, str) else list(value)
    if not texts:
        raise APIError(400, f"'{param}' must not be empty", param=param, code="invalid_value")
    if len(texts) > settings.max_inputs:
        raise APIError(400, f"{len(texts)} inputs in one request; this server takes at most {settings.max_inputs}",
                       param=param, code="too_many_inputs")
    return texts


def _tokenize(served: ClassifierModel, texts: list[str], params: list[str], settings: ServeSettings
              ) -> tuple[list[list[int]], int]:
    try:
        ids, _ = served.tokenize(texts, settings.max_input_tokens)
    except ValueError as err:
        i, reason = err.args
        raise APIError(400, f"'{params[i]}' {reason}", param=params[i], code="context_length_exceeded") from None
    return ids, sum(len(x) for x in ids)


@dataclass
class _Sampling:
    n: int
    max_tokens: int
    temperature: float
    top_p: float
    stop: list[str]
    stream: bool
    include_usage: bool
    seed: int | None


def _sampling(req: Any, max_tokens: int | None, default_max: int, settings: ServeSettings) -> _Sampling:
    bad = req.unsupported()
    if bad:
        raise APIError(400, f"'{bad[0]}' is not supported by tunelab serve", param=bad[0], code="unsupported_parameter")
    n = req.n or 1
    if n > settings.max_n:
        raise APIError(400, f"n={n} is over this server's limit of {settings.max_n}", param="n", code="invalid_value")
    max_tokens = max_tokens or min(default_max, settings.max_tokens)
    if max_tokens > settings.max_tokens:
        raise APIError(400, f"max_tokens={max_tokens} is over this server's limit of {settings.max_tokens}",
                       param="max_tokens", code="invalid_value")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if len(stop) > 4 or any(not s for s in stop) or any(len(s) > 256 for s in stop):
        raise APIError(400, "'stop' takes up to 4 non-empty strings (256 characters at most)", param="stop",
                       code="invalid_value")
    temperature = 1.0 if req.temperature is None else float(req.temperature)
    return _Sampling(n, max_tokens, temperature, 1.0 if req.top_p is None else float(req.top_p), stop,
                     bool(req.stream), bool(req.stream_options and req.stream_options.include_usage), req.seed)


def _check_prompt(served: GeneratorModel, prompt: list[int], max_tokens: int, param: str,
                  settings: ServeSettings) -> None:
    if not prompt:
        raise APIError(400, f"'{param}' is empty", param=param, code="invalid_value")
    if len(prompt) > settings.max_input_tokens:
        raise APIError(400, f"'{param}' has {len(prompt)} tokens; this server's limit is {settings.max_input_tokens}",
                       param=param, code="context_length_exceeded")
    if served.context and len(prompt) + max_tokens > served.context:
        raise APIError(400, f"{len(prompt)} prompt tokens + max_tokens={max_tokens} exceed the model's context of "
                       f"{served.context} tokens", param="max_tokens", code="context_length_exceeded")


def _cut_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    hits = [i for i in (text.find(s) for s in stop) if i >= 0]
    return (text[:min(hits)], True) if hits else (text, False)
