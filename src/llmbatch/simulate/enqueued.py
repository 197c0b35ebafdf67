"""The simulated enqueued-token limit on OpenAI batch creation (`batch_enqueued_tokens`).

    queue = EnqueuedQueue(store, limit=2_000_000)
    refusal = await queue.admit(model, tokens)   # None, or the error that fails the batch

OpenAI limits the input tokens held by an organization's unfinished batches, per model. A
create over the limit is not refused with a 4xx: the batch is created and then fails
validation, `status: "failed"`, with `errors.data[0]` as below (openai-python #2084). Tokens
are counted as the simulator counts prompt tokens (`token_count`, about four characters a
token), over every OpenAI batch of the model that has not ended. `/stats` shows
`batches_token_limited` and `enqueued_tokens_max` (the most tokens live at once, per the
simulator's count), so a test can prove a client never passed the limit.
"""

from __future__ import annotations

from typing import Any

import orjson

from .batches import BatchStore, Item
from .dialects import OPENAI, token_count

__all__ = ["EnqueuedQueue", "batch_tokens", "limit_error"]

ORGANIZATION = "org-simulator"


def batch_tokens(kind: str, items: list[Item]) -> int:
    """The input tokens of a batch's lines, as the simulator counts a prompt's."""
    return sum(token_count(OPENAI.prompt(kind, orjson.loads(body))) for _, body in items)


def limit_error(model: str, limit: int) -> dict[str, Any]:
    """The `errors.data` entry of a batch failed for the limit, in OpenAI's words."""
    return {
        "code": "token_limit_exceeded",
        "message": (
            f"Enqueued token limit reached for {model} in organization {ORGANIZATION}. "
            f"Limit: {limit:,} enqueued tokens. Please try again once some in_progress "
            "batches have been completed."
        ),
        "param": None,
        "line": None,
    }


class EnqueuedQueue:
    """Counts the tokens of live OpenAI batches per model against `limit`."""

    def __init__(self, store: BatchStore, limit: int) -> None:
        self.store = store
        self.limit = limit

    async def live_tokens(self, model: str) -> int:
        total = 0
        for batch in list(self.store.batches.values()):
            if batch.provider != "openai" or batch.model != model or batch.errors is not None:
                continue
            await self.store.refresh(batch)  # batches advance only when looked at
            if batch.end is None:
                total += batch.tokens
        return total

    async def admit(self, model: str, tokens: int) -> dict[str, Any] | None:
        """None if a batch of `tokens` of `model` fits now, else the error that fails it."""
        counters = self.store.counters
        live = await self.live_tokens(model)
        if live + tokens > self.limit:
            counters.batches_token_limited += 1
            return limit_error(model, self.limit)
        counters.enqueued_tokens_max = max(counters.enqueued_tokens_max, live + tokens)
        return None
