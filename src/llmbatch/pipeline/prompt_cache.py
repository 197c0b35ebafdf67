"""The request policy of `prompt_cache="auto"`: in front of an executor, prefix-aware.

    census = PrefixCensus(model=config.model)        # filled by the precheck
    executor = with_prompt_cache(executor_for(context), context, census)

Realtime runs get the full schedule (`llmbatch.prompt_cache.schedule`: groups sent together,
each new prefix warmed up by one request whose answer releases the rest); provider batch
runs and Ray runs get the grouping alone (lines of one prefix next to each other, so in one
batch or one worker's chunk; nothing waits there for an answer). Every request of a shared
prefix gets its provider's cache settings (`llmbatch.prompt_cache.transform`).

TTL: Anthropic's 1-hour cache costs 2x the input price to write against 1.25x for 5 minutes,
so it is asked for only where 5 minutes would lapse: batch API runs (a batch's lines run over
hours, in no promised order) and realtime runs where a group comes back after more than
4 minutes (more requests than the window, paced under `window / 4` per minute by `rpm`).

The deadline executor reads its requests from the input itself (for its batches, and for
what goes realtime): each of those reads is grouped and marked, with no warm-up.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from typing import cast

from ..prompt_cache.census import PrefixCensus
from ..prompt_cache.prefix import Prefix, prefix_of
from ..prompt_cache.schedule import DEFAULT_WINDOW, PrefixSchedule, Scheduled
from ..prompt_cache.transform import TTL, CacheTransform
from ..types import BatchRequest, BatchResult
from .executors import (
    BatchAPIExecutor,
    Context,
    DeadlineExecutor,
    Executor,
    RayExecutor,
    RealtimeExecutor,
)

__all__ = ["CachePolicy", "PromptCacheExecutor", "with_prompt_cache"]

SPREAD_PER_GROUP = 4
LAPSE_MINUTES = 4.0  # a group back after longer than this would find a 5-minute entry gone


def with_prompt_cache(
    executor: Executor, context: Context, census: PrefixCensus | None
) -> Executor:
    """`executor` behind the prompt-cache policy, when the run asks for it and it applies."""
    if census is None or context.config.prompt_cache == "off" or not census.groups():
        return executor
    if isinstance(executor, DeadlineExecutor):
        # It reads the input itself (`reread`), for its batches and its realtime part: each
        # read is grouped and marked, as a batch run's (the batches decide the TTL: 1 hour).
        policy = CachePolicy(context, census, batch=True)
        reread = context.reread
        grouped = dataclasses.replace(context, reread=lambda: policy.grouped(reread()))
        return DeadlineExecutor(grouped)
    if not isinstance(executor, RealtimeExecutor | BatchAPIExecutor | RayExecutor):
        return executor
    return PromptCacheExecutor(executor, context, census)


class CachePolicy:
    """What a run's prompt-cache policy decides per request: its prefix (if worth caching),
    its group's TTL, and the request as sent (`send`)."""

    def __init__(
        self, context: Context, census: PrefixCensus, *, batch: bool, window: int = DEFAULT_WINDOW
    ) -> None:
        config = context.config
        self.census = census
        self.model = config.model
        self.window = window
        self.transform = CacheTransform(
            context.client, provider=config.provider, model=config.model
        )
        rpm = config.rpm
        # Realtime groups come back after about a window's worth of other requests.
        long = rpm is not None and context.total > window and window / rpm > LAPSE_MINUTES
        self.ttl: TTL = "1h" if batch or long else "5m"
        # Anthropic's cache is one per organisation: a group may take every worker. OpenAI's
        # is per machine, and a burst of one prefix spills to machines that have not seen it
        # (each a miss until its first answer): keep a few of each group in flight at a
        # time, several groups side by side (bench/prompt_cache.py: 4 beat 0 and 8).
        self.per_group = None if self.transform.provider == "anthropic" else SPREAD_PER_GROUP

    def prefix(self, item: BatchRequest) -> Prefix | None:
        prefix = prefix_of(item.request, self.model)
        if prefix is None or prefix.tokens < self.transform.minimum(item.request):
            return None  # nothing the provider would cache: sent as is, at once
        return prefix

    def schedule(self, requests: Iterator[BatchRequest]) -> PrefixSchedule:
        return PrefixSchedule(
            requests,
            self.prefix,
            self.census.shared,
            ttl_of=lambda _: self.ttl,
            window=self.window,
            per_group=self.per_group,
        )

    def send(self, scheduled: Scheduled) -> BatchRequest:
        item, prefix = scheduled.item, scheduled.prefix
        if prefix is None or not scheduled.shared:
            return item
        return BatchRequest(item.id, self.transform.apply(item.request, prefix, ttl=scheduled.ttl))

    def grouped(self, requests: Iterator[BatchRequest]) -> Iterator[BatchRequest]:
        """`requests` grouped by prefix and marked, none held."""
        return (self.send(s) for s in self.schedule(requests).grouped())


class PromptCacheExecutor:
    """Wraps an executor of the run (same name, same results) with the schedule and the
    request transform."""

    def __init__(
        self,
        inner: RealtimeExecutor | BatchAPIExecutor | RayExecutor,
        context: Context,
        census: PrefixCensus,
        *,
        window: int = DEFAULT_WINDOW,
    ) -> None:
        self.inner = inner
        self.name = inner.name
        self.policy = CachePolicy(
            context, census, batch=isinstance(inner, BatchAPIExecutor), window=window
        )
        self.schedule: PrefixSchedule | None = None

    async def stream(self, requests: Iterator[BatchRequest]) -> AsyncIterator[BatchResult]:
        policy = self.policy
        self.schedule = schedule = policy.schedule(requests)
        if not isinstance(self.inner, RealtimeExecutor):
            grouped = (policy.send(s) for s in schedule.grouped())
            inner = self.inner.stream(grouped)
            async with contextlib.aclosing(inner) as results:  # type: ignore[type-var]
                async for result in results:
                    yield result
            return

        async def sent() -> AsyncIterator[BatchRequest]:
            async for scheduled in schedule:
                yield policy.send(scheduled)

        # The realtime executor hands its requests to the engine, which pulls an async source
        # as readily as an iterator: the schedule can then wait for a warm-up's answer.
        stream = self.inner.stream(cast(Iterator[BatchRequest], sent()))
        # Closing this stream closes the engine's: admissions stop, in-flight calls cancel.
        async with contextlib.aclosing(stream) as results:  # type: ignore[type-var]
            async for result in results:
                schedule.answered(result.id)
                yield result

    def held(self) -> list[BatchResult]:
        return self.inner.held()
