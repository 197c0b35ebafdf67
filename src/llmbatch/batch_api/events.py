"""What a `BatchAPIRunner` reports while it works: small frozen events for listeners.

    def show(event: BatchEvent) -> None:
        if isinstance(event, BatchPolled):
            print(event.n, event.status, event.succeeded, event.failed, event.elapsed)
    BatchAPIRunner(client, BatchAPIConfig("out.jsonl", listeners=[show]))

The runner only reports; the CLI's per-batch progress bars are one listener. A listener that
raises is logged and ignored: the output file and the ledger are what matter.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["BatchEnded", "BatchEvent", "BatchHeld", "BatchPolled", "BatchSubmitted"]


@dataclass(slots=True, frozen=True)
class BatchSubmitted:
    """Chunk `n` has a provider batch (`reattached`: created by an earlier run)."""

    n: int
    batch_id: str
    count: int
    reattached: bool


@dataclass(slots=True, frozen=True)
class BatchPolled:
    """The provider's answer to one poll: status and counts, seconds since the intent."""

    n: int
    batch_id: str
    status: str
    total: int
    succeeded: int
    failed: int
    elapsed: float


@dataclass(slots=True, frozen=True)
class BatchEnded:
    """Chunk `n` is over and its lines are written (`written` of `count`; the others were
    written by an earlier run). `outcome`: completed, expired, cancelled or failed."""

    n: int
    batch_id: str | None
    outcome: str
    count: int
    written: int


@dataclass(slots=True, frozen=True)
class BatchHeld:
    """Chunk `n` (`count` requests, `tokens` estimated input tokens of `model`) waits for room
    under the provider's enqueued-token `limit`, while this run's live batches of that model
    hold `live` tokens. `refused`: the batch the provider failed for the limit (its chunk is
    created again once there is room); None when the chunk was held before any create."""

    n: int
    model: str
    count: int
    tokens: int
    live: int
    limit: int | None
    refused: str | None = None


BatchEvent = BatchSubmitted | BatchPolled | BatchEnded | BatchHeld
