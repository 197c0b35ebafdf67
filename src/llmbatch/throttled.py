"""`ThrottledLLMClient`: any client, paced by a `RateLimiter` (the seed's face).

    client = ThrottledLLMClient(OpenAIClient(model="gpt-4o-mini"), requests_per_minute=10)
    shared = RateLimiter(requests_per_minute=500)          # one provider account
    a, b = ThrottledLLMClient(c1, limiter=shared), ThrottledLLMClient(c2, limiter=shared)

Each call to `complete` is one admission, so retries made by the engine are paced too.
Given to a `BatchProcessor`, the wrapper is taken apart: its limiter becomes the processor's
one limiter, instead of a second one stacked on the engine's own.
"""

from __future__ import annotations

from .admission import Admission, AdmissionChain
from .clients.base import LLMClient
from .limiter import RateLimiter, RateLimiterStatus
from .types import CompletionRequest, CompletionResponse

__all__ = ["ThrottledLLMClient"]


class ThrottledLLMClient:
    """Wraps `client` so every call first waits for the limiter."""

    def __init__(
        self,
        client: LLMClient,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        *,
        limiter: RateLimiter | None = None,
    ) -> None:
        if limiter is not None and (requests_per_minute or tokens_per_minute):
            raise ValueError("pass either limiter= or the per-minute limits, not both")
        self.client = client
        self.limiter = limiter or RateLimiter(requests_per_minute, tokens_per_minute)

    def get_status(self) -> RateLimiterStatus:
        return self.limiter.status()

    def unwrap(self, limiter: Admission | None = None) -> tuple[LLMClient, Admission]:
        """(the wrapped client, the admission to run it under): this wrapper's limiter, or
        both chained when the caller brings a limiter of its own on purpose."""
        if limiter is None or limiter is self.limiter:
            return self.client, self.limiter
        return self.client, AdmissionChain(limiter, self.limiter)

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        async with self.limiter.admit(request) as permit:
            response = await self.client.complete(request)
            permit.record(response)
        return response

    async def release_loop_resources(self) -> None:
        release = getattr(self.client, "release_loop_resources", None)
        if release is not None:
            await release()

    async def aclose(self) -> None:
        close = getattr(self.client, "aclose", None)
        if close is not None:
            await close()
