"""The one plug point for a provider.

    class MyClient:
        async def complete(self, request: CompletionRequest) -> CompletionResponse:
            return CompletionResponse(content=await call_my_model(request.prompt))

Any object with that method is an `LLMClient`. A client raises the errors of
`llmbatch.errors` (mapping its provider's statuses once, at its boundary); the engine does
the retrying, pacing, timeouts and bookkeeping.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..types import CompletionRequest, CompletionResponse

__all__ = ["LLMClient"]


@runtime_checkable
class LLMClient(Protocol):
    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...
