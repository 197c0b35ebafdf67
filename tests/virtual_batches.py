"""A provider's batch API in memory, timed by the event loop's clock, for virtual-time tests.

    loop = looptime.new_event_loop(start=0, end=DAY)      # asyncio.sleep(600) returns at once
    provider = VirtualBatches(client, turnaround=600)     # batches end 600 virtual s after create
    runner = BatchAPIRunner(client, BatchAPIConfig(out, clock=provider.clock), backend=provider)

It plays the provider only: lines are encoded and answers parsed by the real OpenAI backend it
extends, and the runner, ledger and deadline logic under test are the real ones. A batch ends
`turnaround` seconds after it is created (never, for `math.inf`; `turnarounds` gives each
batch its own, in the order they are created), as `end_status`; a share of
its lines is finished by then (all when completed), in input order. A cancel takes effect
`cancel_delay` seconds after it is asked for; the lines finished by that moment (by the same
linear progress) come back as answers, the rest as `batch_cancelled` errors.
"""

from __future__ import annotations

import asyncio
import itertools
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import looptime
import orjson

from llmbatch.batch_api.backend import BatchInfo, LineOutcome
from llmbatch.batch_api.openai import OpenAIBatches
from llmbatch.clients import OpenAIClient
from llmbatch.clients.provider import ProviderClient
from llmbatch.errors import BadRequestError, BatchAPIError
from llmbatch.types import BatchRequest, CompletionRequest

EPOCH = 1_800_000_000.0  # the wall-clock moment virtual time 0 stands for


@dataclass
class Batch:
    id: str
    tag: str
    ids: list[str]
    created: float  # virtual seconds
    ends_at: float
    status: str = "in_progress"
    cancel_at: float | None = None
    done_at_end: float = 1.0  # share of lines finished when it ends by itself
    stopped: float = field(default=math.inf)  # when it stopped working (end or cancel)

    def finished(self) -> int:
        """Lines finished when work stopped: linear progress from create to `ends_at`."""
        if self.status == "completed":
            return len(self.ids)
        span = self.ends_at - self.created
        share = self.done_at_end if self.status == "expired" else 0.0
        if self.status == "cancelled" and span > 0 and math.isfinite(span):
            share = min(1.0, (self.stopped - self.created) / span)
        return int(len(self.ids) * share)


class VirtualBatches(OpenAIBatches):
    """OpenAI's batch API as a provider in memory (see the module doc)."""

    def __init__(
        self,
        client: ProviderClient,
        *,
        turnaround: float,
        end_status: str = "completed",
        done_at_end: float = 1.0,
        cancel_delay: float = 10.0,
        turnarounds: Sequence[float] = (),
    ) -> None:
        super().__init__(client)
        self.turnaround = turnaround
        self.turnarounds = list(turnarounds)  # per batch, in the order created; then turnaround
        self.end_status = end_status
        self.done_at_end = done_at_end
        self.cancel_delay = cancel_delay
        self.files: dict[str, tuple[str, list[str], int]] = {}  # id -> (name, custom ids, size)
        self.batches: dict[str, Batch] = {}
        self.cancels: list[str] = []
        self.cancel_asked = asyncio.Event()
        self._ids = itertools.count(1)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def clock(self) -> float:
        """Wall time as the runner sees it: the epoch plus the loop's virtual seconds."""
        return EPOCH + self.now()

    async def upload(self, path: Path, filename: str) -> str:
        data = path.read_bytes()
        ids = [orjson.loads(line)["custom_id"] for line in data.splitlines() if line.strip()]
        file_id = f"file-{next(self._ids)}"
        self.files[file_id] = (filename, ids, len(data))
        return file_id

    async def find_upload(self, filename: str, size: int, since: float) -> str | None:
        for file_id, (name, _, n) in self.files.items():
            if name == filename and n == size:
                return file_id
        return None

    async def create(self, key: str, path: Path, file_id: str | None, tag: str) -> BatchInfo:
        assert file_id in self.files, file_id
        now = self.now()
        batch = Batch(
            f"batch-{next(self._ids)}",
            tag,
            list(self.files[file_id][1]),
            created=now,
            ends_at=now + self._turnaround(len(self.batches)),
            done_at_end=self.done_at_end,
        )
        self.batches[batch.id] = batch
        return self._info(batch)

    def _turnaround(self, n: int) -> float:
        return self.turnarounds[n] if n < len(self.turnarounds) else self.turnaround

    async def get(self, batch_id: str) -> BatchInfo:
        return self._info(self.batches[batch_id])

    async def cancel(self, batch_id: str) -> BatchInfo:
        batch = self._advance(self.batches[batch_id])
        if batch.status != "in_progress":
            raise BadRequestError(f"batch {batch_id} is {batch.status}", status_code=400)
        self.cancels.append(batch_id)
        self.cancel_asked.set()
        batch.status, batch.cancel_at = "cancelling", self.now() + self.cancel_delay
        return self._info(batch)

    async def recent(self, since: float) -> AsyncIterator[BatchInfo]:
        for batch in reversed(list(self.batches.values())):
            yield self._info(batch)

    async def results(self, info: BatchInfo) -> AsyncIterator[LineOutcome]:
        batch = self.batches[info.id]
        finished = batch.finished()
        for n, rid in enumerate(batch.ids):
            if n < finished:
                yield LineOutcome(rid, 200, _reply(rid), f"req-{rid}")
            else:
                code = "batch_cancelled" if batch.status == "cancelled" else "batch_expired"
                yield LineOutcome(rid, error=BatchAPIError(f"{code} by the provider", code=code))

    async def cleanup(self, info: BatchInfo, file_id: str | None) -> None:
        return None

    def _advance(self, batch: Batch) -> Batch:
        now = self.now()
        if batch.status in ("in_progress", "cancelling") and now >= batch.ends_at:
            batch.status, batch.stopped = self.end_status, batch.ends_at
        elif batch.status == "cancelling" and now >= (batch.cancel_at or math.inf):
            batch.status, batch.stopped = "cancelled", batch.cancel_at or math.inf
        return batch

    def _info(self, batch: Batch) -> BatchInfo:
        batch = self._advance(batch)
        ended = batch.status in ("completed", "expired", "cancelled")
        return BatchInfo(
            id=batch.id,
            status=batch.status,
            ended=ended,
            total=len(batch.ids),
            succeeded=batch.finished() if ended else 0,
            failed=len(batch.ids) - batch.finished() if ended else 0,
            created_at=EPOCH + batch.created,
            outcome=batch.status if ended else None,
            tag=batch.tag,
            raw={"id": batch.id, "status": batch.status},
        )


def _reply(rid: str) -> dict[str, object]:
    return {
        "id": f"chatcmpl-{rid}",
        "object": "chat.completion",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": f"batch answer {rid}"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


HOUR = 3600.0
T = TypeVar("T")


def in_virtual_time(main: Callable[[], Awaitable[T]], *, end: float = 48 * HOUR) -> T:
    """Run `main()` on a loop whose clock starts at 0 and jumps; past `end` every task fails."""
    loop = looptime.new_event_loop(start=0, end=end)
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


def requests(n: int) -> list[BatchRequest]:
    return [
        BatchRequest(f"r{i:03d}", CompletionRequest(prompt=f"question {i}", max_tokens=16))
        for i in range(n)
    ]


def provider(**kwargs: Any) -> Callable[[], VirtualBatches]:
    def make() -> VirtualBatches:
        client = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key="k")
        return VirtualBatches(client, **kwargs)

    return make
