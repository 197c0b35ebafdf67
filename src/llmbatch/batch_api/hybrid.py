"""One run over both paths: the batch API first, realtime for what would otherwise be late.

    runner = DeadlineRunner(batches, engine, DeadlinePolicy(deadline), capacity)
    await runner.run(requests, on_result=sink.write, done=scan.is_ok,
                     flush=sink.flush, reread=lambda: read_requests())
    runner.duplicates          # ids answered by both paths around a switch (both paid)

`prefer="cost"`: every request goes into provider batches (half price; the caller sizes
them, `deadline.split_size`, so that one late batch costs only its share). A watcher
compares the time left with what the realtime path needs for the requests still in batches
(`DeadlinePolicy.should_switch`); when they meet, it stops submitting and moves the late
batches out one at a time, as realtime runs short of work: it cancels one (the provider then
returns what it finished) and sends its open requests through the engine, while the others
keep their chance to come back at the batch price. When realtime must start on everything at
once, every live batch is cancelled and every open request goes realtime.

`prefer="speed"`: the share realtime can finish before the deadline goes to the engine at
once, only the rest into batches (and the same watcher guards those). Lines a batch leaves
expired, or failed in a way worth retrying, go realtime as soon as they come back.
A deadline already past, or so near that the watcher would switch at once, creates no batch:
every request goes realtime from the start (batches a crashed run left are cancelled).

`tier`: the service tier realtime lines ask for. With "flex" (OpenAI's: the batch price,
answered in the same request), a batch moved to flex costs nothing more, so flex does not
wait for the deadline's switch: once every request is in a batch, a batch (the last created)
moves to flex whenever flex is about to run out of work, timed by what flex really does
(`flex_capacity`: time from admission to answer, refusal waits included, and its measured
throughput). Late lines finish through flex while the deadline allows it, and through the
default tier once realtime must start on all of its work at once (`flex_urgent`, which the
engine's `TierPolicy.urgent` also asks when flex refuses a line).

The realtime estimate (`current_capacity`) uses the latency seen and the throughput the
default tier was seen to reach while it had more work than workers (`ThroughputMeter`): a
client short of CPU shows there, and the switch comes earlier.

Exactly once: the first final result of an id is the one passed to `on_result`; an answer
that arrives later from the other path (a batch line finished just before its cancel took
effect, while the same request was already in flight realtime) is passed to `on_duplicate`
so its cost is counted (`ResultSink.count_duplicate` keeps it durably in the output). A
batch's error for a request realtime now owns is dropped: the realtime result decides. After
a crash, the ledger re-attaches the batches (a cancelled one still returns its finished
lines) and the same rules apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass

from ..deadline import DeadlinePolicy, RealtimeCapacity, ThroughputMeter, Work
from ..engine import Engine
from ..errors import BatchAPIError, InvalidOutputError
from ..io.sink import is_unfinished
from ..pricing import DEFAULT_WORST_OUTPUT_TOKENS
from ..text import chars_to_tokens
from ..tiers import DEFAULT, FLEX, served_tier, with_tier
from ..types import BatchRequest, BatchResult, CompletionRequest
from .ledger import ChunkRecord
from .runner import BatchAPIRunner, is_redoable

__all__ = ["DeadlineRunner", "DeadlineStatus", "Switched", "estimate_work"]

DEFAULT_CHECK_INTERVAL = 5.0
SWITCH_POLL = 0.2  # seconds between looks at the cancelled batches during a switch
PROBES = 3  # realtime requests sent first when the latency decides the switch
MAX_PROBE_WAIT = 60.0  # seconds the batches wait for the probes' answers, at most


def estimate_work(request: CompletionRequest) -> Work:
    """One request's work, as the rate limiter charges it: input from its text, output from
    its output limit (a default bound where unset)."""
    limit = request.output_limit()
    return Work(
        1,
        chars_to_tokens(request.text_length()),
        DEFAULT_WORST_OUTPUT_TOKENS if limit is None else limit,
    )


@dataclass(slots=True, frozen=True)
class Switched:
    """The watcher moved the open requests to realtime."""

    at: float  # time.time()
    requests: int  # moved to realtime
    realtime_seconds: float  # what realtime needed for them, as estimated
    seconds_left: float  # until the deadline
    cancelled: tuple[str, ...]  # provider batch ids asked to cancel


@dataclass(slots=True, frozen=True)
class DeadlineStatus:
    """A snapshot for a progress display."""

    seconds_left: float
    open_requests: int
    realtime_sent: int
    realtime_done: int
    batch_done: int
    switched: bool


class DeadlineRunner:
    """Feeds a `BatchAPIRunner` and an `Engine` from one set of requests, by a deadline."""

    def __init__(
        self,
        batches: BatchAPIRunner,
        engine: Engine,
        policy: DeadlinePolicy,
        capacity: RealtimeCapacity,
        *,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        check_interval: float = DEFAULT_CHECK_INTERVAL,
        on_duplicate: Callable[[BatchResult], None] | None = None,
        listeners: Iterable[Callable[[Switched], None]] = (),
        tier: str | None = None,
        feed_flex: bool = True,
    ) -> None:
        self.batches = batches
        self.engine = engine
        self.policy = policy
        self.capacity = capacity
        self.clock = clock
        self.sleep = sleep  # with `clock`: tests run a whole deadline in virtual time
        self.check_interval = check_interval
        self.on_duplicate = on_duplicate
        self.listeners = list(listeners)
        # The service tier realtime lines ask for; "flex": flex while the deadline allows it.
        self.tier = tier
        # Flex may take batches before the deadline needs it (it costs no more than a batch).
        self.feed_flex = feed_flex
        self.duplicates: list[str] = []
        self.switched: Switched | None = None
        # Requests not yet final in this run, with their estimated work.
        self._open: dict[str, Work] = {}
        self._open_work = Work()
        self._unread = Work()  # of the `total` given to `run`, what the runner has not read
        self._realtime: set[str] = set()  # ids sent (or queued) realtime
        self._realtime_work = Work()  # of those, the ones still open
        self._final: set[str] = set()
        self._batch_done = 0
        self._realtime_done = 0
        self._latency_sum = 0.0
        self._latency_n = 0
        # Flex answers: seconds each held its worker (refusal waits included), and the
        # throughput of each lane while it had work to spare (`ThroughputMeter`).
        self._flex_hold_sum = 0.0
        self._flex_hold_n = 0
        # Requests the engine holds at once (its workers; `capacity.concurrency` counts the
        # attempts in flight, fewer when waits for flex hold no attempt's slot).
        self._workers = max(capacity.concurrency, engine.config.workers)
        least = max(64, 2 * self._workers)  # a few waves of answers, not one
        self._meters = {
            FLEX: ThroughputMeter(min_count=least),
            DEFAULT: ThroughputMeter(min_count=least),
        }
        self._submitted = False  # every request went to a batch (or realtime)
        self._redo: set[str] = set()  # expired / retryable batch lines, to send realtime
        self._switching = False  # from now on every batch error goes realtime
        self._cancelled: set[str] = set()  # batch ids asked to cancel
        # Cancelled one by one, lines not yet sent realtime: batch id -> (when, their work).
        self._moving: dict[str, tuple[float, Work]] = {}
        self._cancel_seen: float | None = None  # the slowest cancel seen, seconds
        self._all_moved = False  # everything open went realtime at once
        self.moves: list[Switched] = []  # every move of work to realtime, in order
        self._straight = False  # the deadline left no time for batches: all went realtime
        self._wake = asyncio.Event()

    def status(self) -> DeadlineStatus:
        return DeadlineStatus(
            seconds_left=self.policy.deadline - self.clock(),
            open_requests=len(self._open),
            realtime_sent=len(self._realtime),
            realtime_done=self._realtime_done,
            batch_done=self._batch_done,
            switched=self.switched is not None,
        )

    def current_capacity(self) -> RealtimeCapacity:
        """The configured capacity, with the latency seen so far once there is some, and the
        throughput the default tier was seen to reach (a client short of CPU, a limit not
        given): what realtime can do when everything must go at the default tier."""
        capacity = self.capacity
        if self._latency_n >= PROBES:
            latency = self._latency_sum / self._latency_n
            capacity = dataclasses.replace(capacity, latency=latency)
        if (rate := self._meters[DEFAULT].rate) is not None:
            capacity = dataclasses.replace(capacity, throughput=rate)
        return capacity

    def flex_capacity(self) -> RealtimeCapacity:
        """What the flex lane does: each request holds its worker for its refusals' waits
        too (the time from its admission to its answer, seen so far), at the throughput the
        lane was seen to reach."""
        capacity = dataclasses.replace(
            self.current_capacity(), concurrency=self._workers, throughput=self._meters[FLEX].rate
        )
        if self._flex_hold_n >= PROBES:
            hold = self._flex_hold_sum / self._flex_hold_n
            capacity = dataclasses.replace(capacity, latency=max(hold, capacity.latency or 0.0))
        return capacity

    async def run(
        self,
        requests: Iterable[BatchRequest],
        *,
        on_result: Callable[[BatchResult], None],
        done: Callable[[str], bool] = lambda rid: False,
        flush: Callable[[], None] | None = None,
        reread: Callable[[], Iterable[BatchRequest]] | None = None,
        total: Work | None = None,
    ) -> None:
        """Run every request to a final result, each passed once to `on_result`.

        `done(id)`: already in the output (from an earlier run). `reread()` gives the requests
        again (from the input file), so they need not be held in memory for a switch; without
        it they are. `total`: the work of all `requests`, if known: lets the run measure the
        latency first when the switch depends on it, and is required with prefer="speed" (the
        realtime share is a share of it).
        """
        if self.policy.prefer == "speed" and total is None:
            raise ValueError('prefer="speed" needs the total work (total=Work(...))')
        self._on_result = on_result
        # What the batch runner has not read yet (it stops reading while a chunk waits for
        # room under the enqueued-token limit): late work too, if no batch takes it in time.
        self._unread = Work() if total is None else total
        kept: dict[str, BatchRequest] | None = None if reread is not None else {}
        to_realtime: asyncio.Queue[BatchRequest | None] = asyncio.Queue()
        quota = probes = 0
        now = self.clock()
        # A deadline already past, or too near for any batch to come back in time, sends
        # everything realtime from the start: a batch created now would only be cancelled,
        # and what it finished meanwhile paid for twice.
        straight = self._straight = self._too_late(now)
        if straight:
            self.batches.halt()
        elif total is not None:
            if self.policy.prefer == "speed":
                quota = self.policy.realtime_share(now, total, self.current_capacity())
            elif self._latency_matters(now, total):
                quota = probes = PROBES

        def feed() -> Iterator[BatchRequest]:
            nonlocal quota
            for item in requests:
                if done(item.id):
                    continue
                work = estimate_work(item.request)
                self._unread -= work
                if item.id in self._open or item.id in self._final:
                    continue
                self._open[item.id] = work
                self._open_work += work
                if kept is not None:
                    kept[item.id] = item
                if straight or quota > 0:
                    quota -= 1
                    self._send(item, to_realtime)
                    continue
                yield item
            self._submitted = True  # every request is in a batch, or with realtime

        source: Iterator[BatchRequest] = feed()
        if probes:
            # Take the probes off the top now (they go realtime); the batches wait for their
            # latency, so that the first decision is made with it.
            first = next(source, None)
            source = itertools.chain([] if first is None else [first], source)
        batch_ended = asyncio.Event()
        ready = asyncio.Event()  # probes answered, or not worth waiting for any longer

        async def probe() -> None:
            limit = self.clock() + min(MAX_PROBE_WAIT, 0.1 * (self.policy.deadline - now))
            while self._realtime_done < min(probes, len(self._realtime)):
                if self.clock() >= limit:
                    break
                await self.sleep(SWITCH_POLL)
            ready.set()

        async def batch_side() -> None:
            try:
                await ready.wait()
                stream = self.batches.stream(source, done=done, flush=flush)
                async with contextlib.aclosing(stream) as results:
                    async for result in results:
                        self._from_batch(result)
            finally:
                batch_ended.set()
                self._wake.set()

        async def watch() -> None:
            await ready.wait()
            while not batch_ended.is_set():
                self._wake.clear()
                await self._steer(straight, source, to_realtime, kept, reread)
                # One pass over the input for all of them, not one each; once work is moving
                # out of the batches, only when realtime runs short (fewer passes, each for
                # more lines: a pass reads the whole input).
                if self._redo and (not self._switching or self._realtime_short()):
                    redo, self._redo = self._redo, set()
                    self._send_open(to_realtime, kept, reread, only=redo)
                if self.switched is not None and not self._open:
                    # Every id has its final result: the run is over. The cancelled batches
                    # finish on the provider's side; the ledger keeps them, and a rerun (or
                    # `llmbatch batches`) collects what they return, skipping what is done.
                    await self._cancel_live()
                    batch_task.cancel()
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.check_interval)
            # Anything still open (redone lines; ids no batch took because the runner was
            # halted) goes realtime; then the realtime side may end.
            for item in source:
                self._send(item, to_realtime)
            self._send_open(to_realtime, kept, reread)
            to_realtime.put_nowait(None)

        async def realtime_side() -> None:
            async def pull() -> AsyncIterator[BatchRequest]:
                while (item := await to_realtime.get()) is not None:
                    if item.id not in self._final:  # the batch answered it meanwhile
                        yield self._lane(item)

            stream = self.engine.stream(pull(), finish_unstarted=False)
            async with contextlib.aclosing(stream) as results:
                async for result in results:
                    self._from_realtime(result)

        async with asyncio.TaskGroup() as group:
            group.create_task(probe())
            batch_task = group.create_task(batch_side())
            group.create_task(watch())
            group.create_task(realtime_side())

    # -- deciding -----------------------------------------------------------------------------

    def _too_late(self, now: float) -> bool:
        """True when the deadline is past, or too near for even one request realtime: no
        batch is created (it would be cancelled at once and its lines bought twice). A
        deadline too near for all the work under the assumed latency is not enough: the
        probes measure the real latency first (`_latency_matters`), and the batches then
        take what realtime will not need."""
        return self.policy.should_switch(now, Work(1), self.current_capacity())

    def _latency_matters(self, now: float, total: Work) -> bool:
        """True when, under the assumed latency, the switch would come in the first half of
        the time given: then a few requests go realtime at once (their answers are used) so
        that the switch is timed by the latency this server really has."""
        switch_at = self.policy.switch_at(total, self.capacity)
        return total.requests > PROBES and switch_at < now + 0.5 * (self.policy.deadline - now)

    def _late_work(self) -> Work:
        """The work realtime must be able to finish if no batch comes back: with prefer="cost"
        all that is open (realtime's own queue shares its pace); with "speed" what is in
        batches (the realtime share was sized to fill the time on its own)."""
        if self.policy.prefer == "cost":
            return self._open_work + self._unread
        return self._open_work - self._realtime_work + self._unread

    def _should_switch(self) -> bool:
        """True once the work still in batches must start leaving them: realtime would need
        all the time left (plus the margin and a cancel's time) for the late work."""
        return self.policy.should_switch(self.clock(), self._late_work(), self.current_capacity())

    def _must_switch_all(self) -> bool:
        """True once realtime must start on all the late work now: no time is left to wait
        for a cancel to return what a batch finished."""
        if (self._open_work - self._realtime_work + self._unread).requests <= 0:
            return False  # nothing left in batches to move
        need = self.current_capacity().seconds(self._late_work())
        return self.clock() >= self.policy.start_by(need)

    def _realtime_short(self) -> bool:
        """True when realtime's queue holds less than a cancel's lead of work."""
        capacity = self.flex_capacity() if self._flex_lane() else self.current_capacity()
        return capacity.seconds(self._realtime_work) <= self._cancel_lead()

    def _cancel_lead(self) -> float:
        """Seconds from a cancel to the lines it gives back: the slowest cancel seen in this
        run, or the policy's allowance before one is seen, plus one look of the watcher."""
        seen = self._cancel_seen
        return (self.policy.cancel_time if seen is None else seen) + self.check_interval

    async def _steer(
        self,
        straight: bool,
        source: Iterator[BatchRequest],
        queue: asyncio.Queue[BatchRequest | None],
        kept: dict[str, BatchRequest] | None,
        reread: Callable[[], Iterable[BatchRequest]] | None,
    ) -> None:
        """One look of the watcher: move late work out of the batches, a batch at a time.

        Once the work still in batches must start leaving them (`_should_switch`), no more
        batches are created and what no batch holds goes realtime; then one live batch is
        cancelled whenever realtime is about to run out of work (so the other batches keep
        their chance to come back at the batch price), and its lines go realtime as soon as
        the cancel ends (what it finished is kept). When realtime must start on everything
        at once (`_must_switch_all`), every live batch is cancelled and all that is open
        goes realtime without waiting.
        """
        if self._all_moved:
            # Batches re-attached after the switch (a rerun decides before the ledger is
            # read) are cancelled too.
            await self._cancel_live()
            return
        if straight or self._must_switch_all():
            await self._switch(source, queue, kept, reread)
            return
        self._release()
        if not self._should_switch():
            if self._feeds_flex():
                # Flex answers at the batch price: a batch moved to it costs nothing more,
                # and flex left idle is capacity lost to the late work to come.
                await self._move_batches(self.flex_capacity())
            return
        if not self._switching:
            self._switching = True  # from now on every batch error goes realtime
            self.batches.halt()
            for item in source:  # requests the halted runner never took
                self._send(item, queue)
            covered = self._covered()
            self._send_open(queue, kept, reread, only=set(self._open).difference(covered))
        await self._move_batches(
            self.flex_capacity() if self._flex_lane() else self.current_capacity()
        )

    def _flex_lane(self) -> bool:
        """True while realtime lines go to flex (the run's tier, the deadline not urgent)."""
        return self.tier == FLEX and not self.flex_urgent()

    def _feeds_flex(self) -> bool:
        """True when flex may take batches before the deadline asks for it: every request
        is in a batch (or with realtime) and flex is not urgent."""
        return self.feed_flex and self._submitted and self._flex_lane()

    async def _move_batches(self, capacity: RealtimeCapacity) -> None:
        """Move live batches to realtime, the last created first, until realtime (at
        `capacity`) has work until a cancel made now could give lines back."""
        # The lines of batches still cancelling, or back and waiting for a pass over the
        # input, are realtime's work too, soon.
        coming = sum((work for _, work in self._moving.values()), self._realtime_work)
        coming = sum((self._open.get(rid, Work()) for rid in self._redo), coming)
        # Move batches until realtime has enough to do until a cancel made now gives lines
        # back: one at a time when realtime is slow, several at once when it is fast.
        while capacity.seconds(coming) <= self._cancel_lead():
            record = self._next_to_cancel()
            if record is None or record.batch_id is None:
                return
            now = self.clock()
            await self.batches.cancel(record.batch_id)
            self._cancelled.add(record.batch_id)
            work = self._work_of(record)
            self._moving[record.batch_id] = (now, work)
            coming += work
            self._announce(
                Switched(
                    at=now,
                    requests=record.count,
                    realtime_seconds=capacity.seconds(self._late_work()),
                    seconds_left=self.policy.deadline - now,
                    cancelled=(record.batch_id,),
                )
            )

    def _work_of(self, record: ChunkRecord) -> Work:
        """The open work of one batch's lines not yet with realtime."""
        ledger = self.batches.ledger
        work = Work()
        for rid in ledger.ids(record) if ledger is not None else ():
            if rid not in self._realtime and (each := self._open.get(rid)) is not None:
                work += each
        return work

    def _covered(self) -> set[str]:
        """Ids held by the ledger's live chunks (their answers come from the batches)."""
        ledger = self.batches.ledger
        covered: set[str] = set()
        if ledger is not None:
            for record in ledger.chunks:
                if record.live:
                    covered.update(ledger.ids(record))
        return covered

    def _next_to_cancel(self) -> ChunkRecord | None:
        """The live batch to move next: the last created (a provider runs batches roughly
        in the order they came, so the last is the least advanced)."""
        ledger = self.batches.ledger
        live = [
            r
            for r in (ledger.chunks if ledger is not None else ())
            if r.live and r.batch_id is not None and r.batch_id not in self._cancelled
        ]
        return max(live, key=lambda r: r.n, default=None)

    def _release(self) -> None:
        """Cancelled batches that ended gave their lines back (answers, or `batch_cancelled`
        lines for realtime); the open lines of those still cancelling past the allowance go
        realtime with the next pass (an answer the batch gives later is counted twice)."""
        ledger = self.batches.ledger
        if ledger is None or not self._moving:
            return
        now = self.clock()
        by_id = {r.batch_id: r for r in ledger.chunks if r.batch_id in self._moving}
        for batch_id, (since, _) in list(self._moving.items()):
            record = by_id.get(batch_id)
            if record is None or not record.live:
                ended = record.ended_at if record is not None and record.ended_at else now
                took = max(0.0, ended - since)
                self._cancel_seen = max(self._cancel_seen or 0.0, took)
                del self._moving[batch_id]
            elif now >= since + self.policy.cancel_time:
                self._redo.update(ledger.ids(record))  # sent with the next pass
                del self._moving[batch_id]

    def _announce(self, event: Switched) -> None:
        if self.switched is None:
            self.switched = event
        self.moves.append(event)
        for listener in self.listeners:
            listener(event)

    async def _switch(
        self,
        source: Iterator[BatchRequest],
        queue: asyncio.Queue[BatchRequest | None],
        kept: dict[str, BatchRequest] | None,
        reread: Callable[[], Iterable[BatchRequest]] | None,
    ) -> None:
        """Move everything open to realtime at once."""
        now = self.clock()
        moving = self._open_work - self._realtime_work + self._unread
        needed = self.current_capacity().seconds(moving)
        self._switching = self._all_moved = True
        self.batches.halt()
        cancelled = await self._cancel_live()
        # A cancelled batch returns what it finished: wait for that, as long as realtime can
        # still start in time, rather than buy those answers again.
        await self._until_ended(set(cancelled), self.policy.start_by(needed))
        # Sent straight to realtime from the start (`_too_late`): all of them were moved.
        before = 0 if self._straight else len(self._realtime)
        for item in source:  # requests the halted runner never took
            self._send(item, queue)
        self._send_open(queue, kept, reread)
        self._moving.clear()
        self._announce(
            Switched(
                at=now,
                requests=len(self._realtime) - before,
                realtime_seconds=needed,
                seconds_left=self.policy.deadline - now,
                cancelled=tuple(cancelled),
            )
        )

    async def _cancel_live(self) -> list[str]:
        """Cancel the live batches not cancelled yet; return the ids newly cancelled."""
        fresh = await self.batches.cancel_live(skip=self._cancelled)
        self._cancelled.update(fresh)
        return fresh

    async def _until_ended(self, batch_ids: set[str], until: float) -> None:
        ledger = self.batches.ledger
        while ledger is not None and self.clock() < until:
            if not any(r.live and r.batch_id in batch_ids for r in ledger.chunks):
                return
            if (self._open_work - self._realtime_work).requests <= 0:
                return  # every open request is with realtime already: nothing to wait for
            await self.sleep(SWITCH_POLL)

    # -- routing ------------------------------------------------------------------------------

    def flex_urgent(self) -> bool:
        """True once realtime must start on all its open work now to be done in time: flex
        (slower, and refusing when short of room) can no longer be waited for."""
        need = self.current_capacity().seconds(self._realtime_work)
        return self.clock() >= self.policy.start_by(need)

    def _lane(self, item: BatchRequest) -> BatchRequest:
        """`item` as the engine sends it: asking for the run's tier; for flex, the default
        tier instead once the deadline cannot wait for flex (a line's own tier is kept)."""
        if self.tier is None:
            return item
        tier = DEFAULT if self.tier == FLEX and self.flex_urgent() else self.tier
        return BatchRequest(item.id, with_tier(item.request, tier))

    def _send(self, item: BatchRequest, queue: asyncio.Queue[BatchRequest | None]) -> None:
        """Queue `item` for realtime, once."""
        if item.id in self._realtime or item.id in self._final:
            return
        self._realtime.add(item.id)
        work = self._open.get(item.id)
        if work is None:
            work = self._open[item.id] = estimate_work(item.request)
            self._open_work += work
        self._realtime_work += work
        queue.put_nowait(item)

    def _send_open(
        self,
        queue: asyncio.Queue[BatchRequest | None],
        kept: dict[str, BatchRequest] | None,
        reread: Callable[[], Iterable[BatchRequest]] | None,
        only: set[str] | None = None,
    ) -> None:
        """Queue for realtime every open request not sent yet (or those in `only`)."""
        wanted = {
            rid
            for rid in (self._open if only is None else only)
            if rid in self._open and rid not in self._realtime
        }
        if not wanted:
            return
        items: Iterable[BatchRequest]
        if kept is not None:
            items = (kept[rid] for rid in wanted)
        else:
            assert reread is not None
            items = (item for item in reread() if item.id in wanted)
        for item in items:
            self._send(item, queue)

    def _from_batch(self, result: BatchResult) -> None:
        rid = result.id
        if rid in self._final:
            self._duplicate(result)
        elif result.error is not None and rid in self._realtime:
            return  # realtime owns it now: its result decides
        elif result.error is not None and (self._switching or _redo(result)):
            self._redo.add(rid)
            self._wake.set()
        else:
            self._batch_done += 1
            self._finish(result)

    def _from_realtime(self, result: BatchResult) -> None:
        if is_unfinished(result):  # cut short (interrupted): no line, still open
            self._on_result(result)
            return
        if result.id in self._final:
            self._duplicate(result)
            return
        if result.error is None and result.timing is not None and result.attempts:
            # The call that answered: a refusal (flex short of room) is answered at once and
            # would make the latency look shorter than an answer takes.
            calls = result.timing.attempts
            answered = calls[-1][1] if calls else result.timing.provider / result.attempts
            self._latency_sum += answered
            self._latency_n += 1
            lane = FLEX if served_tier(result.response) == FLEX else DEFAULT
            if lane == FLEX:
                self._flex_hold_sum += result.duration
                self._flex_hold_n += 1
            # Saturated: more open realtime requests than the engine keeps in flight.
            left = self._realtime_work.requests - (result.id in self._realtime)
            self._meters[lane].finished(self.clock(), saturated=left >= self._workers)
        self._realtime_done += 1
        self._finish(result)

    def _finish(self, result: BatchResult) -> None:
        work = self._open.pop(result.id, None)
        if work is not None:
            self._open_work -= work
            if result.id in self._realtime:
                self._realtime_work -= work
        self._final.add(result.id)
        self._on_result(result)
        if not self._open:
            self._wake.set()  # the watcher ends the run at once

    def _duplicate(self, result: BatchResult) -> None:
        if result.error is None:
            self.duplicates.append(result.id)
            if self.on_duplicate is not None:
                self.on_duplicate(result)


def _redo(result: BatchResult) -> bool:
    """A batch line to finish realtime: expired, failed retryably, cancelled (a cancel is a
    switch, this run's or a crashed one's; the deadline still wants the answer), or a reply
    that broke the schema (the engine asks again, and re-asks as the reply policy allows)."""
    error = result.error
    cancelled = isinstance(error, BatchAPIError) and error.code == "batch_cancelled"
    return cancelled or isinstance(error, InvalidOutputError) or is_redoable(result)
