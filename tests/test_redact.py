"""Keys never leave a client: masked by value in every error, whatever the key looks like."""

from __future__ import annotations

import base64
import traceback
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest
from aiohttp import web

from llmbatch import BatchResult, CompletionRequest, ErrorHandler, LLMBatchError
from llmbatch.clients import AnthropicClient, OpenAIClient
from llmbatch.errorlog import redact
from llmbatch.io.journal import result_line
from llmbatch.redact import MIN_SECRET_CHARS, Redactor

KEY = "local-SECRET123"


async def _echo(request: web.Request) -> web.Response:
    """Answers with the status in the path, echoing the request headers as gateways do."""
    status = int(request.match_info["status"])
    headers = dict(request.headers)
    auth = headers.get("Authorization") or headers.get("x-api-key", "")
    if request.match_info["mode"] == "json":
        body = {
            "error": {"message": f"invalid credentials: {auth}", "type": "invalid_request"},
            "request": {"headers": headers},
        }
        return web.json_response(body, status=status)
    text = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return web.Response(text=f"rejected {auth}\r\n{text}", status=status)


@pytest.fixture
async def echo() -> AsyncIterator[str]:
    app = web.Application()
    app.router.add_post("/{mode}/{status}/{tail:.*}", _echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"127.0.0.1:{port}"
    await runner.cleanup()


def _everywhere(err: BaseException, tmp_path: Path) -> str:
    """Every place an error's text can end up: str, repr, body, traceback, journal, log."""
    handler = ErrorHandler(tmp_path)
    handler.record(err, prompt="p", request_id="r1")
    handler.close()
    log = "".join(p.read_text() for p in tmp_path.glob("*.jsonl"))
    body = getattr(err, "body", None)
    return "\n".join(
        [
            str(err),
            repr(err),
            body if isinstance(body, str) else orjson.dumps(body).decode(),
            "".join(traceback.format_exception(err)),
            result_line(BatchResult("r1", error=err, attempts=1)).decode(),
            log,
        ]
    )


@pytest.mark.parametrize("mode", ["json", "text"])
@pytest.mark.parametrize("status", [401, 400, 500])
async def test_openai_key_echoed_by_the_server_is_masked_everywhere(
    echo: str, tmp_path: Path, mode: str, status: int
) -> None:
    client = OpenAIClient(api_key=KEY, base_url=f"http://{echo}/{mode}/{status}", model="m")
    async with client:
        with pytest.raises(LLMBatchError) as info:
            await client.complete(CompletionRequest(prompt="hi"))
    err = info.value
    assert err.status_code == status
    text = _everywhere(err, tmp_path)
    assert KEY not in text and "SECRET123" not in text
    assert "***" in text  # masked, not dropped: the message still says what happened
    assert KEY not in repr(client)


@pytest.mark.parametrize("mode", ["json", "text"])
async def test_anthropic_x_api_key_echo_is_masked(echo: str, tmp_path: Path, mode: str) -> None:
    key = "gsk_0123456789abcdefGHIJ"  # any shape: masked because it is the key, not by pattern
    client = AnthropicClient(api_key=key, base_url=f"http://{echo}/{mode}/401", model="m")
    async with client:
        with pytest.raises(LLMBatchError) as info:
            await client.complete(CompletionRequest(prompt="hi"))
    text = _everywhere(info.value, tmp_path)
    assert key not in text and "0123456789abcdef" not in text


async def test_credentials_in_the_base_url_are_masked(echo: str, tmp_path: Path) -> None:
    password = "pa$$(w0rd)+"  # regex metacharacters
    basic = base64.b64encode(f"user:{password}".encode()).decode()
    client = OpenAIClient(api_key="", base_url=f"http://user:{password}@{echo}/json/403")
    async with client:
        with pytest.raises(LLMBatchError) as info:
            await client.complete(CompletionRequest(prompt="hi"))
    text = _everywhere(info.value, tmp_path)
    assert password not in text and basic not in text
    assert password not in repr(client)


def test_header_values_are_masked_whole_and_keys_by_value() -> None:
    # Both words of the header value go, not only the one after "Bearer".
    assert "SECRET" not in redact("Authorization: Bearer local-SECRET123")
    assert "local-" not in redact("authorization: Bearer local-SECRET123\r\nHost: x")
    assert redact('{"x-api-key": "abc def"}') == '{"x-api-key": "***"}'
    assert redact("{'Authorization': 'Basic dTpw'}") == "{'Authorization': '***'}"
    assert redact("Host: example.com") == "Host: example.com"
    # By shape, for keys the client did not send.
    assert redact("key sk-proj-abcdefghijkl used") == "key sk-*** used"
    # By value, whatever the shape, including regex metacharacters.
    r = Redactor(["a.b*c+d?e", "gsk_live_1234567890"])
    assert r("x a.b*c+d?e y gsk_live_1234567890 z") == "x *** y *** z"
    assert r("x aXbbbcd?e y") == "x aXbbbcd?e y"  # metacharacters are literal


def test_short_placeholder_keys_are_not_masked_by_value() -> None:
    # A "key" like "-" or "x" (local servers) would mask every dash or x in the text.
    r = Redactor(["-", "x", "EMPTY"])
    assert MIN_SECRET_CHARS == 6
    assert r("x-ray of an EMPTY box") == "x-ray of an EMPTY box"
    echoed = {"headers": {"Authorization": "Bearer -"}}
    assert r.scrub(echoed) == {"headers": {"Authorization": "***"}}  # header values still go
