"""Request bodies (pydantic). Unknown fields are ignored, as the OpenAI API does; OpenAI parameters that
tunelab cannot honour (tools, logprobs, penalties, ...) are refused with a 400 rather than silently dropped.

Validation is strict (pydantic's strict mode): a value must already have its field's JSON type, so
``"max_tokens": "5"`` or ``"stream": 1`` is a 400 naming the field rather than a silent conversion. (An integer
is still a valid number, as JSON has no separate integer type.)"""

from __future__ import annotations

from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.serve.errors import APIError

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1  # what torch.manual_seed takes (OpenAI's int64 seeds fit inside)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = None

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stop: Union[str, list[str], None] = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: int | None = Field(None, ge=SEED_MIN, le=SEED_MAX)
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    user: str | None = None

    def unsupported(self) -> list[str]:
        bad = [k for k in ("presence_penalty", "frequency_penalty") if getattr(self, k) not in (None, 0, 0.0)]
        return bad + (["logit_bias"] if self.logit_bias else [])


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    functions: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        bad += [k for k in ("logprobs", "top_logprobs", "tools", "functions") if getattr(self, k)]
        if self.response_format and self.response_format.get("type") not in (None, "text"):
            bad.append("response_format")
        return bad


class CompletionRequest(_Sampling):
    prompt: Union[str, list[str]]
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None

    def unsupported(self) -> list[str]:
        bad = super().unsupported()
        bad += [k for k in ("echo", "suffix", "logprobs") if getattr(self, k)]
        return bad + (["best_of"] if self.best_of not in (None, 1) else [])


class EmbeddingRequest(_Body):
    model: str
    input: Union[str, list[str]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class ClassifyItem(BaseModel):
    """One input: TEXT, IMAGE (base64-encoded file bytes, or a data: URL), or both. Paths are never read."""

    model_config = ConfigDict(extra="forbid", strict=True)
    text: str | None = None
    image: str | None = None


class ClassifyRequest(_Body):
    """``input``: a text, a list of texts, or a list of items ``{"text": ..., "image": "<base64>"}``;
    ``images``: base64 images (paired in order with ``input`` texts for text+image runs)."""

    model: str
    input: Union[str, list[Union[str, ClassifyItem]], None] = None
    images: list[str] | None = None
    top_k: int | None = Field(None, ge=1)


_TYPE_NAMES = {"str", "int", "float", "bool", "list", "dict", "none"}


def _loc(parts: Any) -> list[str]:
    """The field path of a pydantic error location, without the union-branch names pydantic puts in it."""
    out = []
    for p in parts:
        s = str(p)
        if isinstance(p, int) or (s.islower() and s not in _TYPE_NAMES and "[" not in s and "-" not in s):
            out.append(s)
    return out


def _json_type(value: Any) -> str:
    """How JSON calls VALUE's type (a string, a number, ...), for error messages."""
    if value is None:
        return "null"
    for kind, name in ((bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"),
                       (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def parse(model: type[BaseModel], body: Any) -> Any:
    """BODY validated as MODEL; the first problem becomes a 400 naming the parameter."""
    if not isinstance(body, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(body).__name__}")
    try:
        return model.model_validate(body)
    except ValidationError as err:
        errors = err.errors()
        # of a union's alternatives, report the one that got furthest (input.0.path beats "input is not a string")
        first = max(errors, key=lambda e: len(_loc(e.get("loc", ()))))
        param = ".".join(_loc(first.get("loc", ()))) or None
        missing = first.get("type") == "missing"
        msg = f"missing required parameter '{param}'" if missing else f"invalid '{param}': {first.get('msg')}"
        if str(first.get("type", "")).endswith("_type"):  # a wrong JSON type: say which one was sent
            msg += f", not {_json_type(first.get('input'))}"
        raise APIError(400, msg, param=param, code="missing_required_parameter" if missing else "invalid_value") from None
