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

__all__ = ["ClientConfigError", "LLMClient"]


class ClientConfigError(ValueError):
    """A client cannot be made from its settings; nothing was sent.

    `field` is the setting ("api_key", "base_url"), `source` the environment variable the
    value came from (None when it was passed in), `reason` what is wrong, never the value.
    """

    def __init__(self, field: str, reason: str, *, source: str | None = None) -> None:
        where = f"{field} (from {source})" if source else field
        super().__init__(f"{where}: {reason}")
        self.field = field
        self.reason = reason
        self.source = source


@runtime_checkable
class LLMClient(Protocol):
    async def complete(self, request: CompletionRequest) -> CompletionResponse: ...
