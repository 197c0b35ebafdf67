"""Ray Data: `LLMMapper`, a callable class for `Dataset.map_batches`.

    ds = ray.data.read_parquet("docs/").map_batches(
        LLMMapper, fn_constructor_kwargs={"client": spec, "template": "Summarize: {text}"},
        concurrency=4, batch_size=64, num_cpus=0.5,
    )

Ray calls the mapper synchronously; its engine runs on an event loop of its own thread
(`_LoopThread`), so the worker's connections stay open between batches.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Coroutine, Mapping, Sequence
from typing import Any, TypeVar

from ..clients import ClientSpec
from ..engine import DEFAULT_CONCURRENCY, Concurrency
from ..errors import error_code
from ..retry import RetryPolicy
from ..types import BatchRequest, BatchResult, CompletionRequest, ResponseFormat
from ._engine import worker_engine
from .breaker import ClusterBreaker
from .limiter import ClusterLimiter

__all__ = ["LLMMapper"]

T = TypeVar("T")


class _LoopThread:
    """An event loop on its own thread: keeps a worker's connections alive between calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result()


class LLMMapper:
    """A callable class for `Dataset.map_batches`: rows in, rows with LLM results out.

    Each row becomes a request from `template` (fields by column name) or from the text in
    `prompt_column`. Added columns: `content`, `error`, `prompt_tokens`, `completion_tokens`,
    `duration`, `attempts`. Failed rows are kept, with `error` set, never dropped.
    `concurrency` is per mapper, `"auto"` by default as everywhere in the library.
    """

    def __init__(
        self,
        client: ClientSpec,
        *,
        template: str | None = None,
        prompt_column: str | None = None,
        limiter: ClusterLimiter | None = None,
        concurrency: Concurrency = DEFAULT_CONCURRENCY,
        max_tokens: int | None = None,
        temperature: float | None = None,
        response_format: ResponseFormat = "text",
        system: str | None = None,
        request_timeout: float | None = 600.0,
        retry: RetryPolicy | None = None,
        breaker: ClusterBreaker | None = None,
    ) -> None:
        if (template is None) == (prompt_column is None):
            raise ValueError("give exactly one of template= or prompt_column=")
        self.template = template
        self.prompt_column = prompt_column
        self.defaults = dict(
            max_tokens=max_tokens,
            temperature=temperature,
            response_format=response_format,
            system=system,
        )
        self._runner = _LoopThread()
        self._client = client.build()
        self._limiter = limiter.local() if limiter is not None else None
        # `breaker`: the cluster's one outage breaker (one probe per interval for all
        # mappers while the server is down); without it each mapper has its own.
        self._engine = worker_engine(
            self._client,
            self._limiter,
            concurrency,
            request_timeout,
            retry,
            breaker=breaker.local() if breaker is not None else None,
        )

    def _prompt(self, row: Mapping[str, Any]) -> str:
        if self.template is not None:
            return self.template.format_map(row)
        return str(row[self.prompt_column])  # type: ignore[index]

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        columns = list(batch)
        n = len(batch[columns[0]]) if columns else 0
        rows = [{c: batch[c][i] for c in columns} for i in range(n)]
        requests = [
            BatchRequest(str(i), CompletionRequest(prompt=self._prompt(row), **self.defaults))  # type: ignore[arg-type]
            for i, row in enumerate(rows)
        ]
        results = self._runner.run(self._collect(requests))
        out = dict(batch)
        out["content"] = [r.response.content if r.response else None for r in results]
        out["error"] = [
            None if r.error is None else f"{error_code(r.error)}: {r.error}" for r in results
        ]
        out["prompt_tokens"] = [
            r.response.usage.prompt_tokens if r.response else 0 for r in results
        ]
        out["completion_tokens"] = [
            r.response.usage.completion_tokens if r.response else 0 for r in results
        ]
        out["duration"] = [r.duration for r in results]
        out["attempts"] = [r.attempts for r in results]
        return out

    async def _collect(self, requests: Sequence[BatchRequest]) -> list[BatchResult]:
        results = [r async for r in self._engine.stream(requests)]
        results.sort(key=lambda r: int(r.id))
        return results

    def __del__(self) -> None:
        limiter = getattr(self, "_limiter", None)
        if limiter is not None:
            limiter.close()
