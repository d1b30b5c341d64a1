"""Pieces of tunelab serve that need no model: key checks, request validation, pickle refusal, the CLI surface."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from tunelab.serve.errors import APIError
from tunelab.serve.models import UnsafeWeights, check_safetensors
from tunelab.serve.schemas import ChatRequest, ClassifyRequest, CompletionRequest, parse
from tunelab.serve.settings import ServeSettings, keys_from_env


def _state(*keys: str):
    from tunelab.serve.app import ServerState

    return ServerState(ServeSettings(api_keys=keys), {}, None)


def test_bearer_keys() -> None:
    state = _state("alpha", "beta")
    assert state.authorized("Bearer alpha") and state.authorized("bearer beta") and state.authorized("Bearer  beta ")
    for bad in (None, "", "alpha", "Bearer", "Bearer alph", "Basic alpha", "Bearer alphaX", "Token beta"):
        assert not state.authorized(bad), bad
    assert _state().authorized(None)  # no keys configured: open


def test_keys_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TUNELAB_API_KEYS", " a, b,,c ")
    assert keys_from_env() == ["a", "b", "c"]


@pytest.mark.parametrize("body, param", [
    ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
    ({"model": "m", "messages": []}, "messages"),
    ({"model": "m", "messages": [{"role": "robot", "content": "hi"}]}, "messages.0.role"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 0}, "n"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": -1}, "temperature"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "top_p": 0}, "top_p"),
    ({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, "max_tokens"),
])
def test_chat_validation_names_the_parameter(body: dict, param: str) -> None:
    with pytest.raises(APIError) as err:
        parse(ChatRequest, body)
    assert err.value.status == 400 and err.value.param == param
    assert set(err.value.body()["error"]) == {"message", "type", "param", "code"}


def test_non_object_bodies_and_unsupported_parameters() -> None:
    for body in ([1, 2], "text", 3, None):
        with pytest.raises(APIError):
            parse(CompletionRequest, body)
    req = parse(ChatRequest, {"model": "m", "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}]}],
                              "tools": [{"type": "function"}], "frequency_penalty": 0.5, "whatever": 1})
    assert req.messages[0].text() == "a" and req.unsupported() == ["frequency_penalty", "tools"]
    assert parse(CompletionRequest, {"model": "m", "prompt": "x", "echo": True}).unsupported() == ["echo"]


def test_classify_items_forbid_unknown_keys() -> None:
    assert parse(ClassifyRequest, {"model": "m", "input": ["a", {"text": "b", "image": "AAAA"}]}).input[1].image == "AAAA"
    with pytest.raises(APIError) as err:
        parse(ClassifyRequest, {"model": "m", "input": [{"path": "/etc/passwd"}]})
    assert err.value.status == 400


def test_pickle_only_folders_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(UnsafeWeights, match="pickle"):
        check_safetensors(folder)
    (folder / "model.safetensors").write_bytes(b"")
    check_safetensors(folder)  # a safetensors file beside it: fine (transformers is told to use it)
    nested = tmp_path / "nested"
    (nested / "text_encoder").mkdir(parents=True)
    (nested / "fusion.safetensors").write_bytes(b"")
    (nested / "text_encoder" / "weights.pt").write_bytes(b"")
    with pytest.raises(UnsafeWeights, match="text_encoder"):
        check_safetensors(nested)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnsafeWeights, match="no \\*.safetensors"):
        check_safetensors(empty)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        ServeSettings(max_n=0)
    with pytest.raises(ValueError):
        ServeSettings(timeout_s=0)
    for bad in ({"header_timeout_s": 0}, {"body_timeout_s": -1}):
        with pytest.raises(ValueError, match="header_timeout_s and body_timeout_s must be > 0"):
            ServeSettings(**bad)
    assert (ServeSettings().header_timeout_s, ServeSettings().body_timeout_s) == (10.0, 30.0)


def test_cli_function_defaults_and_help() -> None:
    import typer
    from typer.testing import CliRunner

    from tunelab.serve.cli import _is_loopback, serve

    params = inspect.signature(serve).parameters
    assert params["host"].default.default == "127.0.0.1" and params["port"].default.default == 8000
    assert params["max_batch_size"].default.default == 16 and params["max_wait_ms"].default.default == 5.0
    app = typer.Typer()
    app.command("serve")(serve)
    app.command("other")(lambda: None)  # a multi-command app, as in tunelab's CLI
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for option in ("--host", "--port", "--api-key", "--db", "--no-log-inputs", "--max-batch-size", "--max-wait-ms",
                   "--max-body-bytes", "--max-input-tokens", "--max-tokens", "--max-n", "--timeout-s",
                   "--header-timeout", "--body-timeout"):
        assert option in result.output
    for option in ("--runtime", "--quantize", "--threads"):
        assert option in result.output
    for args, complaint in ((["--runtime", "tensorrt"], "'tensorrt' is not one of auto, onnx, torch"),
                            (["--quantize", "int4"], "the only quantization is int8"),
                            (["--quantize", "int8", "--runtime", "torch"], "drop --runtime torch")):
        bad = CliRunner().invoke(app, ["serve", "some-run", *args], env={"COLUMNS": "200"})
        assert bad.exit_code == 2 and complaint in bad.output, bad.output  # refused before any model loads
    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.4")


def test_settings_refuse_unknown_runtime_and_quantization() -> None:
    from tunelab.serve.settings import ServeSettings

    with pytest.raises(ValueError, match="runtime must be one of auto, onnx, torch"):
        ServeSettings(runtime="gpu")
    with pytest.raises(ValueError, match="quantize must be 'int8'"):
        ServeSettings(quantize="fp8")
    with pytest.raises(ValueError, match="cannot be combined with runtime 'torch'"):
        ServeSettings(quantize="int8", runtime="torch")
    assert ServeSettings().runtime == "auto" and ServeSettings().quantize is None


def _through_metrics(app, messages: list[dict]) -> tuple[str, list[dict]]:
    """Run APP behind MetricsMiddleware with a client that sends MESSAGES (then disconnects); (status label, sent)."""
    import asyncio

    from tunelab.serve.middleware import MetricsMiddleware

    state = _state()
    sent: list[dict] = []
    inbox = list(messages)

    async def receive() -> dict:
        if inbox:
            return inbox.pop(0)
        await asyncio.sleep(0.05)  # the client hangs up a moment later
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)
        await asyncio.sleep(0)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [],
             "asgi": {"version": "3.0", "spec_version": "2.3"}}
    asyncio.run(MetricsMiddleware(app, state)(scope, receive, send))
    samples = [s for metric in state.metrics.requests.collect() for s in metric.samples if s.name.endswith("_total")]
    (sample,) = samples
    return sample.labels["status"], sent


def test_a_hang_up_mid_stream_counts_as_499_and_a_finished_response_as_200() -> None:
    import asyncio

    from starlette.responses import StreamingResponse

    async def forever():
        while True:
            yield "data: x\n\n"
            await asyncio.sleep(0.01)

    status, sent = _through_metrics(StreamingResponse(forever()), [])
    assert status == "499" and sent[0]["status"] == 200 and len(sent) > 2  # it had started streaming

    async def answer_then_listen(scope: dict, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})
        assert (await receive())["type"] == "http.disconnect"  # what a server reports once the answer is out

    status, _ = _through_metrics(answer_then_listen, [])
    assert status == "200"
