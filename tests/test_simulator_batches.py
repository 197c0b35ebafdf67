"""The simulator's batch APIs on the wire: OpenAI Files + Batches, Anthropic Message Batches.

Real HTTP to `llmbatch simulate` in its own process, a plain aiohttp client (not
llmbatch's): these tests pin down the shapes and state machines the batch runner is built
against. Waits are bounded polls of the batch's own state, never timed assertions.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from llmbatch.simulate import SimulatorConfig, SimulatorProcess

CHAT = "/v1/chat/completions"
OPENAI_DONE = {"completed", "failed", "expired", "cancelled"}
KEY = "sk-batch-test"

StartSim = Callable[..., SimulatorProcess]


def chat_line(i: int, custom_id: str | None = None, **body: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id or f"req-{i}",
        "method": "POST",
        "url": CHAT,
        "body": {
            "model": "sim-1",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"question number {i}"}],
        }
        | body,
    }


def jsonl(lines: list[Any]) -> bytes:
    return b"".join((ln if isinstance(ln, bytes) else orjson.dumps(ln)) + b"\n" for ln in lines)


def message_request(i: int, custom_id: str | None = None, **params: Any) -> dict[str, Any]:
    return {
        "custom_id": custom_id or f"req-{i}",
        "params": {
            "model": "claude-sim",
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"question number {i}"}],
        }
        | params,
    }


class Api:
    """A thin client over both batch APIs of one simulator."""

    def __init__(self, http: aiohttp.ClientSession, url: str, key: str | None = None) -> None:
        self.http, self.url = http, url
        self.openai_headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.anthropic_headers = {"x-api-key": key} if key else {}
        self.anthropic_headers["anthropic-version"] = "2023-06-01"

    async def call(
        self, method: str, path: str, anthropic: bool = False, **kw: Any
    ) -> tuple[int, Any]:
        headers = self.anthropic_headers if anthropic else self.openai_headers
        async with self.http.request(method, self.url + path, headers=headers, **kw) as resp:
            raw = await resp.read()
            try:
                return resp.status, orjson.loads(raw)
            except orjson.JSONDecodeError:
                return resp.status, raw

    async def upload(self, data: bytes, filename: str = "input.jsonl") -> tuple[int, Any]:
        form = aiohttp.FormData()
        form.add_field("purpose", "batch")
        form.add_field("file", data, filename=filename)
        return await self.call("POST", "/v1/files", data=form)

    async def create(self, lines: list[Any], endpoint: str = CHAT) -> dict[str, Any]:
        status, f = await self.upload(jsonl(lines))
        assert status == 200, f
        status, batch = await self.call(
            "POST",
            "/v1/batches",
            json={"input_file_id": f["id"], "endpoint": endpoint, "completion_window": "24h"},
        )
        assert status == 200, batch
        return dict(batch)

    async def wait(self, batch_id: str, until: set[str], timeout: float = 30.0) -> list[Any]:
        """Poll the OpenAI batch until its status is in `until`; every snapshot seen."""
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            status, batch = await self.call("GET", f"/v1/batches/{batch_id}")
            assert status == 200, batch
            seen.append(batch)
            if batch["status"] in until:
                return seen
            assert time.monotonic() < deadline, f"batch stuck in {batch['status']}"
            await asyncio.sleep(0.02)

    async def content(self, file_id: str | None) -> list[dict[str, Any]]:
        if file_id is None:
            return []
        status, raw = await self.call("GET", f"/v1/files/{file_id}/content")
        assert status == 200
        if isinstance(raw, dict):  # a one-line file parses as JSON
            return [raw]
        return [orjson.loads(line) for line in raw.splitlines() if line]

    async def create_messages(self, requests: list[Any]) -> tuple[int, Any]:
        return await self.call(
            "POST", "/v1/messages/batches", anthropic=True, json={"requests": requests}
        )

    async def wait_messages(self, batch_id: str, timeout: float = 30.0) -> list[Any]:
        seen: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            status, batch = await self.call(
                "GET", f"/v1/messages/batches/{batch_id}", anthropic=True
            )
            assert status == 200, batch
            seen.append(batch)
            if batch["processing_status"] == "ended":
                return seen
            assert time.monotonic() < deadline, f"batch stuck in {batch['processing_status']}"
            await asyncio.sleep(0.02)

    async def results(self, url: str) -> list[dict[str, Any]]:
        async with self.http.get(url, headers=self.anthropic_headers) as resp:
            assert resp.status == 200
            return [orjson.loads(line) for line in (await resp.read()).splitlines() if line]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def api(start_sim: StartSim, http: aiohttp.ClientSession, *args: str) -> Api:
    return Api(http, start_sim("--batch-seconds", "0.5", "--seed", "7", *args).url)


# -- OpenAI ---------------------------------------------------------------------------------


async def test_openai_batch_runs_to_completed_with_the_realtime_answers(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-seconds", "1.5")
    status, f = await a.upload(jsonl([chat_line(i) for i in range(20)]))
    assert status == 200
    assert f["object"] == "file" and f["purpose"] == "batch" and f["id"].startswith("file-")
    assert f["bytes"] == len(jsonl([chat_line(i) for i in range(20)]))
    status, batch = await a.call(
        "POST",
        "/v1/batches",
        json={
            "input_file_id": f["id"],
            "endpoint": CHAT,
            "completion_window": "24h",
            "metadata": {"run": "t1"},
        },
    )
    assert status == 200
    assert batch["id"].startswith("batch_") and batch["object"] == "batch"
    assert batch["status"] == "validating" and batch["metadata"] == {"run": "t1"}
    assert batch["errors"] is None and batch["output_file_id"] is None
    seen = await a.wait(batch["id"], OPENAI_DONE)
    done = seen[-1]
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 20, "completed": 20, "failed": 0}
    for stamp in ("created_at", "in_progress_at", "finalizing_at", "completed_at", "expires_at"):
        assert isinstance(done[stamp], int), stamp
    assert done["failed_at"] is None and done["cancelled_at"] is None
    # Lines finish progressively: the counts grew while it was in progress.
    counts = [b["request_counts"]["completed"] for b in seen if b["status"] == "in_progress"]
    assert counts == sorted(counts) and len(set(counts)) > 1
    assert done["error_file_id"] is None
    out = await a.content(done["output_file_id"])
    assert sorted(line["custom_id"] for line in out) == sorted(f"req-{i}" for i in range(20))
    line = next(ln for ln in out if ln["custom_id"] == "req-3")
    assert line["id"].startswith("batch_req_") and line["error"] is None
    assert line["response"]["status_code"] == 200
    body = line["response"]["body"]
    assert body["object"] == "chat.completion" and body["usage"]["completion_tokens"] > 0
    # The same answer as the realtime route gives for the same request.
    status, realtime = await a.call("POST", CHAT, json=chat_line(3)["body"])
    assert status == 200
    text = body["choices"][0]["message"]["content"]
    assert text == realtime["choices"][0]["message"]["content"]
    assert body["usage"] == realtime["usage"]
    assert len({ln["id"] for ln in out}) == 20
    # Files can be read and deleted.
    status, meta = await a.call("GET", f"/v1/files/{done['output_file_id']}")
    assert status == 200 and meta["purpose"] == "batch_output"
    status, gone = await a.call("DELETE", f"/v1/files/{done['output_file_id']}")
    assert status == 200 and gone == {
        "id": done["output_file_id"],
        "object": "file",
        "deleted": True,
    }
    status, err = await a.call("GET", f"/v1/files/{done['output_file_id']}/content")
    assert status == 404 and err["error"]["type"] == "invalid_request_error"


async def test_openai_embeddings_and_completions_endpoints(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http)
    emb = [
        {
            "custom_id": f"e{i}",
            "method": "POST",
            "url": "/v1/embeddings",
            "body": {"model": "emb", "input": f"text {i}"},
        }
        for i in range(3)
    ]
    batch = await a.create(emb, endpoint="/v1/embeddings")
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    assert done["status"] == "completed"
    out = await a.content(done["output_file_id"])
    assert {ln["response"]["body"]["object"] for ln in out} == {"list"}
    comp = [
        {
            "custom_id": f"c{i}",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": f"p {i}"},
        }
        for i in range(3)
    ]
    batch = await a.create(comp, endpoint="/v1/completions")
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    out = await a.content(done["output_file_id"])
    assert {ln["response"]["body"]["object"] for ln in out} == {"text_completion"}


async def test_openai_error_rate_puts_failed_lines_in_the_error_file(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-error-rate", "0.5")
    batch = await a.create([chat_line(i) for i in range(40)] + [chat_line(40, max_tokens=0)])
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    assert done["status"] == "completed"
    out = await a.content(done["output_file_id"])
    err = await a.content(done["error_file_id"])
    counts = done["request_counts"]
    assert counts["completed"] == len(out) and counts["failed"] == len(err)
    assert counts["total"] == 41 == len(out) + len(err)
    assert 0 < len(out) < 40 and len(err) > 1
    assert {ln["custom_id"] for ln in out} | {ln["custom_id"] for ln in err} == {
        f"req-{i}" for i in range(41)
    }
    assert all(ln["response"]["status_code"] == 200 for ln in out)
    statuses = {ln["custom_id"]: ln["response"]["status_code"] for ln in err}
    # A line the API refuses (max_tokens 0) is a 400 whatever the error rate draws.
    assert statuses.pop("req-40") == 400
    assert set(statuses.values()) == {500}
    failures = [ln for ln in err if ln["custom_id"] != "req-40"]
    assert {ln["response"]["body"]["error"]["type"] for ln in failures} == {"server_error"}


async def test_openai_batch_expires_part_way_with_the_finished_lines(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-expire-after", "0.5")
    batch = await a.create([chat_line(i) for i in range(10)])
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    assert done["status"] == "expired" and isinstance(done["expired_at"], int)
    assert done["completed_at"] is None
    out = await a.content(done["output_file_id"])
    err = await a.content(done["error_file_id"])
    assert [ln["custom_id"] for ln in out] == [f"req-{i}" for i in range(5)]
    assert [ln["custom_id"] for ln in err] == [f"req-{i}" for i in range(5, 10)]
    assert all(ln["response"] is None and ln["error"]["code"] == "batch_expired" for ln in err)
    assert done["request_counts"] == {"total": 10, "completed": 5, "failed": 5}


async def test_openai_cancel_keeps_finished_lines_and_cancels_the_rest(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-seconds", "3")
    batch = await a.create([chat_line(i) for i in range(30)])
    # Cancel once some lines have finished, so both files have lines.
    deadline = time.monotonic() + 30
    while True:
        status, now = await a.call("GET", f"/v1/batches/{batch['id']}")
        if now["request_counts"]["completed"] > 0:
            break
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    status, cancelling = await a.call("POST", f"/v1/batches/{batch['id']}/cancel")
    assert status == 200 and cancelling["status"] == "cancelling"
    assert isinstance(cancelling["cancelling_at"], int)
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    assert done["status"] == "cancelled" and isinstance(done["cancelled_at"], int)
    out = await a.content(done["output_file_id"])
    err = await a.content(done["error_file_id"])
    assert 0 < len(out) < 30 and len(out) + len(err) == 30
    assert len(out) >= now["request_counts"]["completed"]
    assert all(ln["error"]["code"] == "batch_cancelled" for ln in err)
    # A batch that has ended cannot be cancelled again.
    status, refused = await a.call("POST", f"/v1/batches/{batch['id']}/cancel")
    assert status == 400 and "cancelled" in refused["error"]["message"]
    stats = await a.call("GET", "/stats")
    assert stats[1]["batches_cancelled"] == 1


async def test_stalled_batch_stays_in_progress_until_cancelled_or_expired(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-stall-rate", "1", "--batch-expire-seconds", "1.5")
    stalled = await a.create([chat_line(i) for i in range(5)])
    other = await a.create([chat_line(i) for i in range(5)])
    seen = await a.wait(stalled["id"], {"in_progress"})
    assert seen[-1]["request_counts"]["completed"] == 0
    status, _ = await a.call("POST", f"/v1/batches/{other['id']}/cancel")
    assert status == 200
    cancelled = (await a.wait(other["id"], OPENAI_DONE))[-1]
    assert cancelled["status"] == "cancelled" and cancelled["output_file_id"] is None
    assert len(await a.content(cancelled["error_file_id"])) == 5
    seen = await a.wait(stalled["id"], OPENAI_DONE)
    assert {b["status"] for b in seen[:-1]} <= {"validating", "in_progress"}
    assert all(b["request_counts"]["completed"] == 0 for b in seen)
    assert seen[-1]["status"] == "expired"
    err = await a.content(seen[-1]["error_file_id"])
    assert [ln["error"]["code"] for ln in err] == ["batch_expired"] * 5


@pytest.mark.parametrize(
    ("bad", "code", "param"),
    [
        (b'{"custom_id": "x", "method": "POST", "url": ', "invalid_json_line", None),
        (chat_line(99) | {"body": {"messages": []}}, "missing_required_parameter", "body.model"),
        (
            {"custom_id": "y", "method": "POST", "url": CHAT, "body": {"model": "sim-1"}},
            "missing_required_parameter",
            "body.messages",
        ),
        (chat_line(99) | {"url": "/v1/embeddings"}, "url_mismatch", "url"),
        (chat_line(99, custom_id="req-0"), "duplicate_custom_id", "custom_id"),
        (chat_line(99, model="other-model"), "model_mismatch", "body.model"),
    ],
)
async def test_openai_bad_line_fails_validation_naming_the_line(
    start_sim: StartSim, http: aiohttp.ClientSession, bad: Any, code: str, param: str | None
) -> None:
    a = api(start_sim, http)
    lines = [chat_line(0), chat_line(1), bad, chat_line(3)]
    batch = await a.create(lines)
    # A batch is created validating (its first poll may already find it failed: validation
    # takes 0.05 s here, less than a loaded machine's poll).
    assert batch["status"] == "validating"
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    assert done["status"] == "failed" and isinstance(done["failed_at"], int)
    assert done["errors"]["object"] == "list"
    (error,) = done["errors"]["data"]
    assert error["code"] == code and error["line"] == 3 and error["param"] == param
    assert error["message"]
    assert done["output_file_id"] is None and done["error_file_id"] is None
    assert done["request_counts"] == {"total": 0, "completed": 0, "failed": 0}


async def test_openai_forced_validation_failure_and_caps(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-fail-validation")
    done = (await a.wait((await a.create([chat_line(0)]))["id"], OPENAI_DONE))[-1]
    assert done["status"] == "failed" and done["errors"]["data"][0]["line"] is None
    b = api(start_sim, http, "--batch-max-requests", "3", "--batch-max-bytes", "2000")
    done = (await b.wait((await b.create([chat_line(i) for i in range(4)]))["id"], OPENAI_DONE))[-1]
    assert done["status"] == "failed"
    assert done["errors"]["data"][0]["code"] == "too_many_tasks"
    status, err = await b.upload(jsonl([chat_line(i) for i in range(30)]))
    assert status == 400 and err["error"]["message"] == "File is too large."
    status, err = await b.upload(jsonl([chat_line(0)]), filename="input.csv")
    assert status == 400 and ".jsonl" in err["error"]["message"]
    status, err = await b.call(
        "POST",
        "/v1/batches",
        json={"input_file_id": "file-nope", "endpoint": CHAT, "completion_window": "24h"},
    )
    assert status == 404
    status, f = await b.upload(jsonl([chat_line(0)]))
    for field, value in (
        ("endpoint", "/v1/nope"),
        ("completion_window", "48h"),
        ("metadata", {"k": "v" * 513}),
    ):
        payload = {"input_file_id": f["id"], "endpoint": CHAT, "completion_window": "24h"}
        status, err = await b.call("POST", "/v1/batches", json=payload | {field: value})
        assert status == 400 and err["error"]["param"] == field


async def test_openai_list_pages_newest_first(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http)
    ids = [(await a.create([chat_line(0)]))["id"] for _ in range(3)]
    status, page = await a.call("GET", "/v1/batches?limit=2")
    assert status == 200 and page["object"] == "list" and page["has_more"] is True
    assert [b["id"] for b in page["data"]] == ids[::-1][:2]
    status, rest = await a.call("GET", f"/v1/batches?limit=2&after={page['last_id']}")
    assert [b["id"] for b in rest["data"]] == [ids[0]] and rest["has_more"] is False


# -- Anthropic ------------------------------------------------------------------------------


async def test_anthropic_batch_ends_with_results_in_any_order(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-seconds", "1")
    status, batch = await a.create_messages([message_request(i) for i in range(12)])
    assert status == 200
    assert batch["id"].startswith("msgbatch_") and batch["type"] == "message_batch"
    assert batch["processing_status"] == "in_progress" and batch["results_url"] is None
    assert batch["request_counts"] == {
        "processing": 12,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["created_at"].endswith("Z") and batch["expires_at"] > batch["created_at"]
    status, early = await a.call(
        "GET", f"/v1/messages/batches/{batch['id']}/results", anthropic=True
    )
    assert status == 400 and early["error"]["type"] == "invalid_request_error"
    seen = await a.wait_messages(batch["id"])
    done = seen[-1]
    assert done["request_counts"]["succeeded"] == 12 and done["request_counts"]["processing"] == 0
    assert done["ended_at"] is not None
    assert done["results_url"].endswith(f"/v1/messages/batches/{batch['id']}/results")
    processing = [b["request_counts"]["processing"] for b in seen]
    assert processing == sorted(processing, reverse=True) and len(set(processing)) > 2
    results = await a.results(done["results_url"])
    assert sorted(r["custom_id"] for r in results) == sorted(f"req-{i}" for i in range(12))
    assert [r["custom_id"] for r in results] != [f"req-{i}" for i in range(12)]  # shuffled
    r5 = next(r for r in results if r["custom_id"] == "req-5")
    assert r5["result"]["type"] == "succeeded"
    message = r5["result"]["message"]
    assert message["type"] == "message" and message["usage"]["output_tokens"] > 0
    status, realtime = await a.call(
        "POST", "/v1/messages", anthropic=True, json=message_request(5)["params"]
    )
    assert message["content"] == realtime["content"] and message["usage"] == realtime["usage"]
    status, listing = await a.call("GET", "/v1/messages/batches", anthropic=True)
    assert [b["id"] for b in listing["data"]] == [batch["id"]] and listing["has_more"] is False
    status, deleted = await a.call("DELETE", f"/v1/messages/batches/{batch['id']}", anthropic=True)
    assert deleted == {"id": batch["id"], "type": "message_batch_deleted"}
    status, _ = await a.call("GET", f"/v1/messages/batches/{batch['id']}", anthropic=True)
    assert status == 404


async def test_anthropic_errored_expired_and_canceled_results(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-error-rate", "0.5", "--batch-expire-after", "0.5")
    status, batch = await a.create_messages([message_request(i) for i in range(20)])
    done = (await a.wait_messages(batch["id"]))[-1]
    counts = done["request_counts"]
    assert counts["expired"] == 10 and counts["succeeded"] + counts["errored"] == 10
    assert counts["errored"] > 0 and counts["succeeded"] > 0
    results = {r["custom_id"]: r["result"] for r in await a.results(done["results_url"])}
    assert len(results) == 20
    assert all(results[f"req-{i}"] == {"type": "expired"} for i in range(10, 20))
    errored = [r for r in results.values() if r["type"] == "errored"]
    assert len(errored) == counts["errored"]
    assert errored[0]["error"] == {
        "type": "error",
        "error": {"type": "api_error", "message": "Internal server error"},
    }
    b = api(start_sim, http, "--batch-stall-rate", "1")
    status, batch = await b.create_messages([message_request(i) for i in range(4)])
    status, canceling = await b.call(
        "POST", f"/v1/messages/batches/{batch['id']}/cancel", anthropic=True
    )
    assert status == 200 and canceling["processing_status"] == "canceling"
    assert canceling["cancel_initiated_at"] is not None
    done = (await b.wait_messages(batch["id"]))[-1]
    assert done["request_counts"]["canceled"] == 4
    results = await b.results(done["results_url"])
    assert [r["result"] for r in results] == [{"type": "canceled"}] * 4


@pytest.mark.parametrize(
    ("requests", "named"),
    [
        (
            [message_request(0), message_request(1), message_request(2, custom_id="a/b.txt")],
            "requests.2.custom_id",
        ),
        ([message_request(0), message_request(1, custom_id="x" * 65)], "requests.1.custom_id"),
        ([message_request(0), message_request(1, custom_id="req-0")], "requests.1.custom_id"),
        (
            [message_request(0), {"custom_id": "b", "params": {"model": "m", "messages": []}}],
            "requests.1.params.max_tokens",
        ),
        ([message_request(0), {"custom_id": "b"}], "requests.1.params"),
    ],
)
async def test_anthropic_bad_request_is_refused_naming_its_index(
    start_sim: StartSim, http: aiohttp.ClientSession, requests: list[Any], named: str
) -> None:
    a = api(start_sim, http)
    status, err = await a.create_messages(requests)
    assert status == 400
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert err["error"]["message"].startswith(named + ":")
    stats = (await a.call("GET", "/stats"))[1]
    assert stats["batches_created"] == 0


async def test_anthropic_caps_forced_failure_and_keys(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-max-requests", "3", "--batch-max-bytes", "1000")
    status, err = await a.create_messages([message_request(i) for i in range(4)])
    assert status == 400 and "at most 3" in err["error"]["message"]
    big = [message_request(i, system="x" * 400) for i in range(3)]
    status, err = await a.create_messages(big)
    assert status == 413 and err["error"]["type"] == "request_too_large"
    b = api(start_sim, http, "--batch-fail-validation")
    status, err = await b.create_messages([message_request(0)])
    assert status == 400
    sim = SimulatorProcess("--api-key-env", "SIM_KEY", env={"SIM_KEY": KEY})
    try:
        anonymous = Api(http, sim.url)
        status, err = await anonymous.create_messages([message_request(0)])
        assert status == 401 and err["error"]["type"] == "authentication_error"
        status, err = await anonymous.call("GET", "/v1/batches")
        assert status == 401 and err["error"]["code"] == "invalid_api_key"
        keyed = Api(http, sim.url, KEY)
        assert (await keyed.create_messages([message_request(0)]))[0] == 200
        assert (await keyed.upload(jsonl([chat_line(0)])))[0] == 200
    finally:
        sim.close()


# -- both -----------------------------------------------------------------------------------


async def test_stats_count_files_batches_and_lines(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http)
    batch = await a.create([chat_line(i) for i in range(6)])
    assert (await a.create_messages([message_request(i) for i in range(4)]))[0] == 200
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    await a.call("DELETE", f"/v1/files/{done['output_file_id']}")
    await a.call("DELETE", f"/v1/files/{batch['input_file_id']}")
    stats = (await a.call("GET", "/stats"))[1]
    assert stats["files_uploaded"] == 1 and stats["files_deleted"] == 2
    assert stats["batches_created"] == 2 and stats["batch_lines"] == 10
    assert stats["batches_cancelled"] == 0 and stats["batches_failed"] == 0
    assert stats["batch_lines_answered"] >= 6 and stats["batch_polls"] >= 1
    assert stats["received"] == 0  # batch lines are not realtime requests


def test_config_refuses_bad_batch_settings() -> None:
    for bad in (
        {"batch_seconds": 0.0},
        {"batch_error_rate": 1.5},
        {"batch_expire_after": -0.1},
        {"batch_stall_rate": 2.0},
        {"batch_max_requests": 0},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SimulatorConfig(**bad)  # type: ignore[arg-type]
    assert SimulatorConfig(batch_seconds=3.0).expire_seconds == 15.0


async def test_delay_stretches_a_batch_past_its_window(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    # Without the delay this batch completes in 0.5 s; a 100 s delay (no spread) outlasts
    # its 1 s window, so it expires with nothing done.
    a = api(
        start_sim,
        http,
        "--batch-delay-median",
        "100",
        "--batch-delay-sigma",
        "0",
        "--batch-expire-seconds",
        "1",
    )
    batch = await a.create([chat_line(i) for i in range(10)])
    seen = await a.wait(batch["id"], OPENAI_DONE)
    assert seen[-1]["status"] == "expired"
    assert seen[-1]["output_file_id"] is None
    assert len(await a.content(seen[-1]["error_file_id"])) == 10


async def test_cancel_while_validating_cancels_every_line(
    start_sim: StartSim, http: aiohttp.ClientSession
) -> None:
    a = api(start_sim, http, "--batch-seconds", "20")  # validating lasts 2 s
    batch = await a.create([chat_line(i) for i in range(3)])
    status, cancelling = await a.call("POST", f"/v1/batches/{batch['id']}/cancel")
    assert status == 200 and cancelling["status"] == "cancelling"
    done = (await a.wait(batch["id"], OPENAI_DONE))[-1]
    assert done["status"] == "cancelled" and done["output_file_id"] is None
    err = await a.content(done["error_file_id"])
    assert sorted(ln["custom_id"] for ln in err) == ["req-0", "req-1", "req-2"]


async def test_cli_flags_reach_the_config(start_sim: StartSim, http: aiohttp.ClientSession) -> None:
    sim = start_sim(
        "--batch-seconds", "3", "--batch-error-rate", "0.25", "--batch-expire-after", "0.5",
        "--batch-stall-rate", "0.1", "--batch-fail-validation", "--batch-max-requests", "9",
    )  # fmt: skip
    async with http.get(sim.url + "/config") as resp:
        config = await resp.json()
    assert config["batch_seconds"] == 3.0 and config["batch_error_rate"] == 0.25
    assert config["batch_expire_after"] == 0.5 and config["batch_stall_rate"] == 0.1
    assert config["batch_fail_validation"] is True and config["batch_max_requests"] == 9


def test_simulate_help_documents_the_batch_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "llmbatch", "simulate", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--batch-seconds",
        "--batch-expire-seconds",
        "--batch-error-rate",
        "--batch-expire-after",
        "--batch-fail-validation",
        "--batch-stall-rate",
        "--batch-delay-median",
        "--batch-delay-sigma",
        "--batch-max-requests",
        "--batch-max-bytes",
    ):
        assert flag in out, flag
