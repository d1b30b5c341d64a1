"""``POST /v1/classify``: labels and scores from any classifier run (texts, base64 images, or both per input).

Separate from the OpenAI routes because it is tunelab's own API: inputs are matched against what the model
takes (text, image, text+image), images are decoded off the event loop and logged as hashes, never bytes.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import Any

from fastapi import Request
from starlette.responses import JSONResponse, Response

from tunelab.serve.errors import APIError
from tunelab.serve.inputs import _decode_image, _tokenize
from tunelab.serve.models import ClassifierModel, EncoderItem
from tunelab.serve.schemas import ClassifyItem, ClassifyRequest, parse
from tunelab.serve.state import RequestRecord, ServerState, _now


async def _classify(state: ServerState, request: Request, body: Any, rec: RequestRecord) -> Response:
    settings = state.settings
    req = parse(ClassifyRequest, body)
    served = state.model_for(req.model, "/v1/classify", rec)
    assert isinstance(served, ClassifierModel)
    if req.input is None and not req.images:
        raise APIError(400, "missing required parameter 'input' (texts or items) or 'images'", param="input",
                       code="missing_required_parameter")
    raw: list[Any] = [] if req.input is None else ([req.input] if isinstance(req.input, str) else list(req.input))
    items = [ClassifyItem(text=x) if isinstance(x, str) else x for x in raw]
    params = [f"input[{i}]" for i in range(len(items))]
    if req.images is not None:
        if not req.images:
            raise APIError(400, "'images' must not be empty", param="images", code="invalid_value")
        if not items:
            items, params = [ClassifyItem(image=b) for b in req.images], [f"images[{i}]" for i in range(len(req.images))]
        elif len(items) == len(req.images) and all(it.image is None for it in items):
            items = [ClassifyItem(text=it.text, image=b) for it, b in zip(items, req.images)]
        else:
            raise APIError(400, "give 'images' alone, or with one text per image in 'input'", param="images",
                           code="invalid_value")
    if not items:
        raise APIError(400, "'input' must not be empty", param="input", code="invalid_value")
    if len(items) > settings.max_inputs:
        raise APIError(400, f"{len(items)} inputs in one request; this server takes at most {settings.max_inputs}",
                       param="input", code="too_many_inputs")
    what = {"text": "texts", "image": "images", "text+image": "a text and an image per input"}[served.input_kind]
    for it, p in zip(items, params):
        for kind, needed in (("text", served.needs_text), ("image", served.needs_image)):
            value = getattr(it, kind)
            if needed and value is None:
                raise APIError(400, f"'{p}' has no {kind}; model '{served.name}' ({served.task_name}) takes {what}",
                               param=p, code="invalid_value")
            if not needed and value is not None:
                raise APIError(400, f"'{p}' has an {kind}; model '{served.name}' ({served.task_name}) takes {what}",
                               param=p, code="invalid_value")
    images: list[Any] = [None] * len(items)
    logged: list[Any] = [it.text for it in items]
    if served.needs_image:
        def decode_all() -> list[tuple[Any, bytes]]:
            out = []
            for it, p in zip(items, params):
                try:
                    out.append(_decode_image(it.image, served.image_mode, settings.max_image_pixels))
                except ValueError as err:
                    raise APIError(400, f"'{p}': {err}", param=p, code="invalid_image") from None
            return out

        decoded = await asyncio.to_thread(decode_all)
        images = [im for im, _ in decoded]
        logged = [{**({"text": it.text} if it.text is not None else {}),
                   "image_sha256": hashlib.sha256(data).hexdigest(), "image_bytes": len(data)}
                  for it, (_, data) in zip(items, decoded)]
    rec.set_input(logged[0] if len(logged) == 1 else logged, settings.log_inputs)
    ids: list[Any] = [None] * len(items)
    if served.needs_text:
        ids, rec.input_tokens = _tokenize(served, [it.text for it in items], params, settings)
    results = await served.batcher.submit([EncoderItem("classify", i, im) for i, im in zip(ids, images)])
    top_k = min(req.top_k, len(served.labels)) if req.top_k else None
    predictions = [served.prediction(s, top_k) for s in results]
    rec.output = predictions
    if len(predictions) == 1:
        rec.label, rec.score, rec.scores = predictions[0]["label"], predictions[0]["score"], predictions[0]["scores"]
    else:
        rec.scores = [p["scores"] for p in predictions]
    usage = {"prompt_tokens": rec.input_tokens or 0, "total_tokens": rec.input_tokens or 0}
    return JSONResponse({"id": f"clf-{uuid.uuid4().hex}", "object": "list", "created": _now(), "model": served.name,
                         "data": [{"index": i, **p} for i, p in enumerate(predictions)], "usage": usage})
