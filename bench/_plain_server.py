"""A chat-completions server written apart from our simulator, in its own process.

    with plain_server(latency_ms=50, gzip=True, chunked=True, close_every=100) as url:
        ...  # POST url + "/v1/chat/completions"

    python bench/_plain_server.py --latency-ms 50 --gzip --chunked --close-every 100

The benchmarks' second server: ~100 lines of asyncio protocol (no web framework), so a
client is not measured only against the simulator's friendliest wire habits (aiohttp's
server, a Content-Length, a connection kept alive forever). It answers every POST with an
OpenAI chat completion after `latency_ms`; with `--gzip` the body is gzip-encoded when the
request accepts it, with `--chunked` it is sent with `Transfer-Encoding: chunked` (no
Content-Length), and with `--close-every N` a connection is closed after its N-th answer
(`Connection: close`, as nginx's `keepalive_requests` does). It reads requests one at a
time per connection (clients do not pipeline) and prints `listening on URL` when ready.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gzip as gzip_module
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

__all__ = ["plain_server"]


class _Connection(asyncio.Protocol):
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.buf = b""
        self.served = 0
        self.closing = False
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0 or self.closing:
            return
        head = self.buf[:end].decode("latin-1").lower()
        length = 0
        accepts_gzip = False
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name == "content-length":
                length = int(value)
            elif name == "accept-encoding":
                accepts_gzip = "gzip" in value
        if len(self.buf) < end + 4 + length:
            return
        body, self.buf = self.buf[end + 4 : end + 4 + length], self.buf[end + 4 + length :]
        self.served += 1
        close = bool(self.args.close_every) and self.served % self.args.close_every == 0
        self.closing = close
        delay = self.args.latency_ms / 1000
        asyncio.get_running_loop().call_later(delay, self.answer, body, accepts_gzip, close)

    def answer(self, body: bytes, accepts_gzip: bool, close: bool) -> None:
        if self.transport is None:
            return
        request = orjson.loads(body)
        prompt = request["messages"][-1]["content"]
        payload = orjson.dumps(
            {
                "id": f"chatcmpl-{id(self)}-{self.served}",
                "object": "chat.completion",
                "created": 1_700_000_000,
                "model": request.get("model", "plain"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": f"An answer to {prompt}."},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15},
            }
        )
        headers = [b"HTTP/1.1 200 OK", b"Content-Type: application/json"]
        if self.args.gzip and accepts_gzip:
            payload = gzip_module.compress(payload, compresslevel=1)
            headers.append(b"Content-Encoding: gzip")
        if self.args.chunked:
            headers.append(b"Transfer-Encoding: chunked")
            payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(payload), payload)
        else:
            headers.append(b"Content-Length: %d" % len(payload))
        headers.append(b"Connection: close" if close else b"Connection: keep-alive")
        self.transport.write(b"\r\n".join(headers) + b"\r\n\r\n" + payload)
        if close:
            self.transport.close()
        elif self.buf:
            self.data_received(b"")


async def _serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Connection(args), "127.0.0.1", args.port)
    port = server.sockets[0].getsockname()[1]
    print(f"listening on http://127.0.0.1:{port}", flush=True)
    async with server:
        await server.serve_forever()


@contextlib.contextmanager
def plain_server(
    *, latency_ms: float, gzip: bool = False, chunked: bool = False, close_every: int = 0
) -> Iterator[str]:
    """Yield the base URL of a plain server in its own process; stop it afterwards."""
    argv = [sys.executable, str(Path(__file__)), "--latency-ms", str(latency_ms)]
    argv += ["--close-every", str(close_every)]
    argv += ["--gzip"] * gzip + ["--chunked"] * chunked
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("listening on "):
            raise RuntimeError(f"plain server did not start: {line!r}")
        yield line.removeprefix("listening on ").strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--gzip", action="store_true")
    parser.add_argument("--chunked", action="store_true")
    parser.add_argument("--close-every", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(args))
    else:
        uvloop.run(_serve(args))


if __name__ == "__main__":
    main()
