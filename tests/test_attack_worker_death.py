"""Issue 27 item 6: a client raising a BaseException never kills a worker silently.

Every request gets exactly one result, or the batch raises.
"""

from __future__ import annotations

import asyncio

import pytest

from llmbatch import (
    BatchProcessor,
    BatchProcessorConfig,
    BatchRequest,
    ClientContractError,
    CompletionRequest,
    CompletionResponse,
)


class _Quirk(BaseException):
    """A user's BaseException subclass (not an Exception)."""


class Misbehaving:
    """Answers every request but those named in `raises`, which raise the given exception."""

    def __init__(self, raises: dict[str, BaseException]) -> None:
        self.raises = raises

    async def complete(self, request: CompletionRequest) -> CompletionResponse:
        await asyncio.sleep(0)
        error = self.raises.get(str(request.prompt))
        if error is not None:
            raise error
        return CompletionResponse(f"answer to {request.prompt}")


def _batch(n: int) -> list[BatchRequest]:
    return [BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}")) for i in range(n)]


def _processor(client: Misbehaving) -> BatchProcessor:
    return BatchProcessor(client, BatchProcessorConfig(max_concurrency=3))


@pytest.mark.parametrize(
    "raised", [asyncio.CancelledError(), GeneratorExit()], ids=["CancelledError", "GeneratorExit"]
)
def test_a_cancel_or_generator_exit_from_the_client_is_that_requests_error(
    raised: BaseException,
) -> None:
    client = Misbehaving({"p2": raised, "p5": raised, "p7": raised})
    results = _processor(client).process_batch(_batch(10))
    assert [r.id for r in results] == [f"r{i}" for i in range(10)]
    failed = {r.id: r.error for r in results if r.error is not None}
    assert set(failed) == {"r2", "r5", "r7"}
    for error in failed.values():
        assert isinstance(error, ClientContractError)
        assert isinstance(error.raised, type(raised))
    assert all(r.response is not None for r in results if r.id not in failed)


def test_another_base_exception_from_the_client_makes_the_batch_raise() -> None:
    client = Misbehaving({"p3": _Quirk("boom")})
    with pytest.raises(_Quirk, match="boom"):
        _processor(client).process_batch(_batch(10))


async def test_a_stream_never_ends_quietly_when_a_worker_is_lost() -> None:
    client = Misbehaving({"p4": _Quirk("boom")})
    seen: list[str] = []
    with pytest.raises(_Quirk):
        async for result in _processor(client).stream(_batch(10)):
            seen.append(result.id)
    assert "r4" not in seen
