"""A scripted client for tests: replies, latency and failures without a network.

    client = FakeClient(latency=0.01, failures={"flaky prompt": [ServerError("boom")]})
    await client.complete(CompletionRequest(prompt="flaky prompt"))   # raises ServerError
    await client.complete(CompletionRequest(prompt="flaky prompt"))   # now answers

By default it answers deterministically from the prompt (valid JSON when JSON mode is asked),
with usage of about one token per four characters. It counts calls and the peak number of
calls in flight, which is what tests of concurrency limits assert on.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence

import orjson

from ..text import chars_to_tokens, flatten_messages
from ..types import CompletionRequest, CompletionResponse, Usage

__all__ = ["FakeClient", "fake_reply"]

Reply = str | CompletionResponse | BaseException
Responder = Callable[[CompletionRequest], Reply]


def fake_reply(request: CompletionRequest) -> str:
    """The default answer: short, deterministic, JSON when JSON mode is asked."""
    text = request.prompt or flatten_messages(request.messages)
    digest = hashlib.blake2b(text.encode(), digest_size=4).hexdigest()
    words = text.split()
    gist = " ".join(words[:8])
    if request.response_format == "json":
        return orjson.dumps({"summary": gist, "digest": digest, "words": len(words)}).decode()
    return f"[{digest}] {gist}"


class FakeClient:
    """An `LLMClient` whose behaviour is given by the test.

    `responder` maps a request to a reply text, a full `CompletionResponse`, or an exception
    to raise. `failures` maps a prompt to exceptions raised by its first calls, in order.
    `latency` is seconds per call (or a function of the request); `sleep` is injectable.
    """

    def __init__(
        self,
        responder: Responder | str | None = None,
        *,
        latency: float | Callable[[CompletionRequest], float] = 0.0,
        failures: Mapping[str, Sequence[BaseException]] | None = None,
        model: str = "fake-model",
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if isinstance(responder, str):
            text = responder
            self._responder: Responder = lambda _req: text
        else:
            self._responder = responder or fake_reply
        self._latency = latency
        self._failures: dict[str, deque[BaseException]] = defaultdict(deque)
        for prompt, errors in (failures or {}).items():
            self._failures[prompt].extend(errors)
        self.model = model
        self._sleep = sleep
        self.calls: list[CompletionRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        self.calls.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            latency = self._latency(request) if callable(self._latency) else self._latency
            if latency > 0:
                await self._sleep(latency)
            pending = self._failures.get(request.prompt)
            if pending:
                raise pending.popleft()
            reply = self._responder(request)
            if isinstance(reply, BaseException):
                raise reply
            if isinstance(reply, CompletionResponse):
                return reply
            return CompletionResponse(
                content=reply,
                model=request.model or self.model,
                usage=Usage(
                    max(1, chars_to_tokens(request.text_length())), max(1, chars_to_tokens(reply))
                ),
                finish_reason="stop",
            )
        finally:
            self.in_flight -= 1
