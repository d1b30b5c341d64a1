"""Streamed completions and chat (``stream: true``): server-sent events ending ``data: [DONE]``.

The state machine: queue the generation job, wait (within the request timeout) until the model thread has
started, then turn token events into per-choice text deltas, holding back text that could still be the start
of a stop string and half-decoded characters; finish each choice with its reason, optionally send usage, and
record the request in the log once the stream has ended (or failed, timed out, or been closed by the client).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from starlette.responses import Response, StreamingResponse

from tunelab.serve.errors import APIError
from tunelab.serve.inputs import _cut_at_stop, _Sampling
from tunelab.serve.models import GeneratorModel, GenJob
from tunelab.serve.state import RequestRecord, ServerState, _now


def _sse(payload: Any) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


@dataclass
class _Row:
    ids: list[int] = field(default_factory=list)
    text: str = ""
    sent: int = 0
    finish: str | None = None


async def _start_stream(state: ServerState, request: Request, served: GeneratorModel, rec: RequestRecord,
                        job: GenJob, s: _Sampling, chat: bool) -> Response:
    """Queue the job, wait (within the request timeout) until generation has started, then stream."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()
    job.stream = lambda event: loop.call_soon_threadsafe(events.put_nowait, event)
    submitted = asyncio.ensure_future(served.batcher.submit([job]))

    def on_done(task: asyncio.Future) -> None:
        if not task.cancelled():
            task.exception()  # retrieved here: the stream reports it
        events.put_nowait(("done", task))

    submitted.add_done_callback(on_done)
    try:
        first = await events.get()
    except BaseException:
        job.cancel.set()
        submitted.cancel()
        raise
    if first[0] == "done" and not first[1].cancelled() and first[1].exception() is not None:
        raise first[1].exception()
    deadline = rec.t0 + state.settings.timeout_s
    rec_id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = _now()
    rows = [_Row() for _ in range(len(job.prompts) * job.n)]
    hold = max((len(x) for x in s.stop), default=1) - 1

    def chunk(index: int, delta: str | None, finish: str | None, role: bool = False) -> dict:
        if chat:
            d: dict[str, Any] = {"role": "assistant", "content": ""} if role else ({} if delta is None else {"content": delta})
            choice = {"index": index, "delta": d, "logprobs": None, "finish_reason": finish}
            payload = {"id": rec_id, "object": "chat.completion.chunk", "created": created, "model": served.name,
                       "choices": [choice]}
        else:
            choice = {"index": index, "text": delta or "", "logprobs": None, "finish_reason": finish}
            payload = {"id": rec_id, "object": "text_completion", "created": created, "model": served.name,
                       "choices": [choice]}
        if s.include_usage:
            payload["usage"] = None
        return payload

    def advance(row: _Row, token: int) -> str:
        """The new text ROW can show after TOKEN (held back while it could still be the start of a stop string)."""
        if row.finish is not None:
            return ""
        if token in served.stops:
            row.finish = "stop"
        else:
            row.ids.append(token)
            text = served.decode(row.ids)
            row.text = text.lstrip() if chat else text
            row.text, stopped = _cut_at_stop(row.text, s.stop)
            if stopped:
                row.finish = "stop"
            elif len(row.ids) >= s.max_tokens:
                row.finish = "length"
            elif row.text.endswith("\ufffd"):
                return ""  # half a character: wait for the rest of its bytes
        upto = len(row.text) if row.finish else max(row.sent, len(row.text) - hold)
        delta, row.sent = row.text[row.sent:upto], upto
        return delta

    async def body() -> Any:
        status, error, event = 200, None, first
        try:
            if chat:
                for i in range(len(rows)):
                    yield _sse(chunk(i, None, None, role=True))
            while True:
                kind, value = event
                if kind == "tokens":
                    for i, (row, token) in enumerate(zip(rows, value)):
                        was_open = row.finish is None
                        delta = advance(row, token)
                        if delta:
                            yield _sse(chunk(i, delta, None))
                        if was_open and row.finish is not None:
                            yield _sse(chunk(i, None, row.finish))
                    if all(r.finish is not None for r in rows):
                        job.cancel.set()  # every row is done (stop strings): stop generating
                        break
                elif kind == "end":
                    break
                elif kind == "done":
                    task = value
                    if not task.cancelled() and task.exception() is not None:
                        err = task.exception()
                        raise err if isinstance(err, APIError) else APIError(500, "generation failed", code="server_error")
                    break
                left = deadline - time.perf_counter()
                if left <= 0:
                    raise asyncio.TimeoutError
                event = await asyncio.wait_for(events.get(), left)
            for i, row in enumerate(rows):
                if row.finish is None:
                    row.finish = "length"
                    tail, row.sent = row.text[row.sent:], len(row.text)
                    if tail:
                        yield _sse(chunk(i, tail, None))
                    yield _sse(chunk(i, None, row.finish))
            completion = sum(len(r.ids) for r in rows)
            state.metrics.tokens.labels(served.name, "completion").inc(completion)
            if s.include_usage:
                prompt_tokens = (rec.input_tokens or 0) * s.n
                yield _sse({"id": rec_id, "object": "chat.completion.chunk" if chat else "text_completion",
                            "created": created, "model": served.name, "choices": [],
                            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion,
                                      "total_tokens": prompt_tokens + completion}})
            yield "data: [DONE]\n\n"
        except asyncio.TimeoutError:
            status, error = 504, f"the request took longer than {state.settings.timeout_s} s"
            yield _sse(APIError(504, error, code="timeout").body())
            yield "data: [DONE]\n\n"
        except APIError as err:
            status, error = err.status, err.message
            yield _sse(err.body())
            yield "data: [DONE]\n\n"
        except (asyncio.CancelledError, GeneratorExit):
            status, error = 499, "the client closed the connection mid-stream"
            raise
        finally:
            job.cancel.set()
            rec.status, rec.error = status, error
            rec.output = [r.text for r in rows] if status == 200 else None
            state.finish(rec)
            state.metrics.in_flight.labels(rec.route).dec()

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
