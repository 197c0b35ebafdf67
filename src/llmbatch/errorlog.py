"""A structured log of failed requests: one JSON line each, one file per day.

    handler = ErrorHandler("logs/")      # logs/llm_errors_2026-11-26.jsonl
    processor = BatchProcessor(client, BatchProcessorConfig(error_handler=handler,
                               prompt_section=PromptSection.DOMAIN_CLASSIFICATION))

Each line holds timestamp, request_id, error_type (rate_limit, timeout, parse_failed,
server_error, auth, bad_request, connection, cancelled, unknown), prompt_section, prompt
(first 5000 characters), response (first 5000), error_message and retry_count. Secrets never
reach the file: anything shaped like an API key or an Authorization header is masked, because
provider error bodies sometimes echo the key that was sent.

Writes are serialised by a lock, so one handler may be shared by threads and event loops.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson

from .errors import error_code
from .events import Event, RequestFinished
from .redact import redact
from .text import flatten_messages
from .types import BatchResult, CompletionRequest, PromptSection

__all__ = ["ErrorHandler", "redact", "request_text"]

MAX_PROMPT_CHARS = 5000
MAX_RESPONSE_CHARS = 5000


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[:limit] + f"... [truncated {len(text) - limit} chars]"


class ErrorHandler:
    """Appends failed requests to `log_dir/llm_errors_YYYY-MM-DD.jsonl` (local date).

    Use it directly (`handler.record(...)`) or as an engine listener (`handler(event)`).
    `now` is injectable for tests.
    """

    def __init__(
        self,
        log_dir: str | Path,
        *,
        prompt_section: PromptSection | str = "",
        now: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self.log_dir = Path(log_dir)
        self.prompt_section = str(prompt_section)
        self._now = now
        self._lock = threading.Lock()
        self._file: IO[bytes] | None = None
        self._day: str | None = None
        self.count = 0

    def path_for(self, day: dt.date) -> Path:
        return self.log_dir / f"llm_errors_{day.isoformat()}.jsonl"

    def record(
        self,
        error: BaseException,
        *,
        prompt: str = "",
        response: str | None = None,
        retry_count: int = 0,
        request_id: str | None = None,
        prompt_section: PromptSection | str | None = None,
    ) -> None:
        """Write one line for a failed request. Never raises on a secret-bearing message."""
        now = self._now()
        body = getattr(error, "body", None)
        if response is None and body is not None:
            response = body if isinstance(body, str) else orjson.dumps(body).decode()
        line = {
            "timestamp": now.isoformat(),
            "request_id": request_id,
            "error_type": error_code(error),
            "prompt_section": str(prompt_section or self.prompt_section),
            "prompt": redact(_truncate(prompt, MAX_PROMPT_CHARS)),
            "response": redact(_truncate(response or "", MAX_RESPONSE_CHARS)),
            "error_message": redact(f"{type(error).__name__}: {error}"),
            "retry_count": retry_count,
        }
        data = orjson.dumps(line) + b"\n"
        day = now.date().isoformat()
        with self._lock:
            if self._day != day or self._file is None:
                self._close_locked()
                self.log_dir.mkdir(parents=True, exist_ok=True)
                self._file = open(self.path_for(now.date()), "ab")  # noqa: SIM115
                self._day = day
            self._file.write(data)
            self._file.flush()
            self.count += 1

    def record_result(
        self, result: BatchResult, prompt: str, *, prompt_section: PromptSection | str | None = None
    ) -> None:
        if result.error is not None:
            self.record(
                result.error,
                prompt=prompt,
                retry_count=max(0, result.attempts - 1),
                request_id=result.id,
                prompt_section=prompt_section,
            )

    def __call__(self, event: Event) -> None:
        if isinstance(event, RequestFinished) and event.result.error is not None:
            self.record_result(event.result, request_text(event.request.request))

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> ErrorHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request_text(request: CompletionRequest) -> str:
    """What the error log shows as a request's prompt: the prompt, or its messages' text."""
    return request.prompt or flatten_messages(request.messages)
