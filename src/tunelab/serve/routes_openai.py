"""The OpenAI-compatible model routes: ``/v1/embeddings``, ``/v1/chat/completions`` and ``/v1/completions``.

Each handler validates its request, resolves the model, fills the request record and answers in OpenAI's
shape; `_generate` runs a generation job (or hands it to `tunelab.serve.streaming` for ``stream: true``).
The common wrapper (body, JSON, timeout, errors, log) is `tunelab.serve.routes._model_route`.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import numpy as np
from fastapi import Request
from starlette.responses import JSONResponse, Response

from tunelab.serve.errors import APIError
from tunelab.serve.inputs import _check_prompt, _cut_at_stop, _Sampling, _sampling, _text_list, _tokenize
from tunelab.serve.models import ClassifierModel, EncoderItem, GeneratorModel, GenJob
from tunelab.serve.schemas import ChatRequest, CompletionRequest, EmbeddingRequest, parse
from tunelab.serve.state import RequestRecord, ServerState, _now
from tunelab.serve.streaming import _start_stream


async def _embeddings(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(EmbeddingRequest, body)
    served = state.model_for(req.model, "/v1/embeddings", rec)
    assert isinstance(served, ClassifierModel)
    if req.dimensions is not None:
        raise APIError(400, "'dimensions' is not supported by tunelab serve", param="dimensions",
                       code="unsupported_parameter")
    texts = _text_list(req.input, "input", settings)
    params = ["input"] if isinstance(req.input, str) else [f"input[{i}]" for i in range(len(texts))]
    for t, p in zip(texts, params):
        if not t:
            raise APIError(400, f"'{p}' is an empty string", param=p, code="invalid_value")
    rec.set_input(texts[0] if isinstance(req.input, str) else texts, settings.log_inputs)
    ids, rec.input_tokens = _tokenize(served, texts, params, settings)
    vectors = await served.batcher.submit([EncoderItem("embed", i) for i in ids])
    dims = int(vectors[0].shape[0])
    rec.output = {"embeddings": len(vectors), "dimensions": dims}
    encode = ((lambda v: base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii"))
              if req.encoding_format == "base64" else (lambda v: [float(x) for x in v]))
    return JSONResponse({"object": "list", "model": served.name,
                         "data": [{"object": "embedding", "index": i, "embedding": encode(v)}
                                  for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": rec.input_tokens, "total_tokens": rec.input_tokens}})


async def _chat(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(ChatRequest, body)
    served = state.model_for(req.model, "/v1/chat/completions", rec)
    assert isinstance(served, GeneratorModel)
    sampling = _sampling(req, req.max_completion_tokens or req.max_tokens, settings.max_tokens, settings)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    if messages[-1]["role"] == "assistant":
        raise APIError(400, "the last message is the assistant's; end with a user message to get a reply",
                       param="messages", code="invalid_value")
    rec.set_input(messages, settings.log_inputs)
    try:
        prompt = served.chat_prompt(messages)
    except Exception as err:  # noqa: BLE001 - the run's template may reject a conversation (roles, order)
        raise APIError(400, f"the run's chat template rejects these messages: {str(err)[:300]}", param="messages",
                       code="invalid_value") from None
    _check_prompt(served, prompt, sampling.max_tokens, "messages", settings)
    return await _generate(state, request, served, rec, [prompt], sampling, chat=True)


async def _completions(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(CompletionRequest, body)
    served = state.model_for(req.model, "/v1/completions", rec)
    assert isinstance(served, GeneratorModel)
    sampling = _sampling(req, req.max_tokens, 16, settings)
    texts = _text_list(req.prompt, "prompt", settings)
    rec.set_input(texts[0] if isinstance(req.prompt, str) else texts, settings.log_inputs)
    prompts = [served.completion_prompt(t) for t in texts]
    for i, p in enumerate(prompts):
        _check_prompt(served, p, sampling.max_tokens, "prompt" if isinstance(req.prompt, str) else f"prompt[{i}]",
                      settings)
    return await _generate(state, request, served, rec, prompts, sampling, chat=False)


async def _generate(state: ServerState, request: Request, served: GeneratorModel, rec: RequestRecord,
                    prompts: list[list[int]], s: _Sampling, chat: bool) -> Response:
    rec.input_tokens = sum(len(p) for p in prompts)
    job = GenJob(prompts, s.n, s.max_tokens, s.temperature > 0, s.temperature, s.top_p, s.seed)
    state.metrics.tokens.labels(served.name, "prompt").inc(rec.input_tokens * s.n)
    if s.stream:
        return await _start_stream(state, request, served, rec, job, s, chat)
    try:
        (choices,) = await served.batcher.submit([job])
    finally:
        job.cancel.set()  # no-op when done; stops the generation when this request timed out or went away
    out, finish_reasons, completion_tokens = [], [], 0
    for ids, finish in choices:
        completion_tokens += len(ids)
        text, stopped = _cut_at_stop(served.decode(ids), s.stop)
        out.append(text.strip() if chat else text)
        finish_reasons.append("stop" if stopped else finish)
    state.metrics.tokens.labels(served.name, "completion").inc(completion_tokens)
    rec.output = out
    usage = {"prompt_tokens": rec.input_tokens * s.n, "completion_tokens": completion_tokens,
             "total_tokens": rec.input_tokens * s.n + completion_tokens}
    if chat:
        return JSONResponse({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": _now(),
                             "model": served.name, "choices": [
                                 {"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                                  "finish_reason": f} for i, (t, f) in enumerate(zip(out, finish_reasons))],
                             "usage": usage})
    return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": _now(),
                         "model": served.name, "choices": [
                             {"index": i, "text": t, "logprobs": None, "finish_reason": f}
                             for i, (t, f) in enumerate(zip(out, finish_reasons))], "usage": usage})
