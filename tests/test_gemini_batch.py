"""`--provider gemini --batch-api` against the simulator's Gemini Batch and File API routes, as
users run it: the CLI as a real subprocess, crashes as real `kill -9`s, what the provider saw
read from the simulator's /stats; and the official google-genai SDK driving those routes."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import json
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from llmbatch.batch_api import (
    BatchAPIConfig,
    BatchAPIRunner,
    BatchSubmitted,
    GeminiBatches,
    Ledger,
    Splitter,
)
from llmbatch.batch_api.gemini import grpc_http_status
from llmbatch.clients import GeminiClient
from llmbatch.simulate import Simulator, SimulatorConfig, SimulatorProcess
from llmbatch.types import BatchRequest, CompletionRequest

from .helpers import (
    KEYS,
    batch_run_args,
    cli,
    ids_once,
    ledger_chunks,
    read_out,
    start_cli,
    wait_for,
    write_requests,
)

KEY = KEYS["GEMINI_API_KEY"]
MODEL = "gemini-2.5-flash"
Start = Callable[..., SimulatorProcess]


def run_args(sim: SimulatorProcess, inp: Path, out: Path, *extra: str) -> list[str]:
    return batch_run_args(sim, "gemini", inp, out, *extra)


def chunks(out: Path) -> list[dict[str, Any]]:
    return ledger_chunks(out)


def codes(out: Path) -> Counter[str]:
    return Counter(rec["error"]["code"] if rec["error"] else "ok" for rec in read_out(out))


# -- whole runs ---------------------------------------------------------------------------------


def test_a_run_splits_into_inline_batches_and_writes_every_line_once(
    start_sim: Start, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(25)]
    write_requests(inp, ids)
    proc = cli(*run_args(sim, inp, out, "--batch-max-requests", "10"))
    assert proc.returncode == 0, proc.stderr
    assert ids_once(out) == Counter(ids)
    realtime_price = None
    for rec in read_out(out):
        assert rec["error"] is None and rec["llmbatch"]["batch_api"] is True
        body = rec["response"]["body"]
        assert body["candidates"][0]["finishReason"] == "STOP"  # the realtime body, as is
        usage = rec["llmbatch"]["usage"]
        # gemini-2.5-flash: $0.30 in, $2.50 out per 1M; the batch price is half.
        realtime_price = (usage["prompt_tokens"] * 0.30 + usage["completion_tokens"] * 2.5) / 1e6
        assert rec["llmbatch"]["cost"] == pytest.approx(realtime_price / 2)
    stats = sim.stats()
    # Small batches go inline: nothing uploaded, one batch per chunk.
    assert (stats["batches_created"], stats["files_uploaded"]) == (3, 0)
    assert [c["batch_id"].startswith("batches/") for c in chunks(out)] == [True] * 3
    listed = cli("batches", "list", str(out))
    assert listed.returncode == 0, listed.stderr
    assert "BATCH_STATE_SUCCEEDED" in listed.stdout
    stats = json.loads(cli("stats", str(out), "--json").stdout)
    assert list(stats["cost_by_model"]) == [MODEL]  # read from the body's modelVersion
    exported = out.with_suffix(".csv")
    done = cli("export", str(out), "-o", str(exported), "--input", str(inp))
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(exported.open()))
    assert [row["id"] for row in rows] == ids  # input order
    by_id = {rec["custom_id"]: rec for rec in read_out(out)}
    for row in rows:
        parts = by_id[row["id"]]["response"]["body"]["candidates"][0]["content"]["parts"]
        assert row["reply"] == parts[0]["text"] and row["reply"]


def test_per_line_errors_keep_their_code(start_sim: Start, tmp_path: Path) -> None:
    sim = start_sim("--batch-seconds", "0.3", "--batch-error-rate", "0.4", "--seed", "3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(20)]
    write_requests(inp, ids)
    args = run_args(sim, inp, out)
    assert cli(*args).returncode == 1
    found = codes(out)
    assert found["ok"] and found["server_error"] and set(found) == {"ok", "server_error"}
    failed = [rec for rec in read_out(out) if rec["error"]]
    assert "INTERNAL" in failed[0]["error"]["message"]
    lines_before = sim.stats()["batch_lines"]
    retry = cli(*args, "--retry-failed")
    assert retry.returncode in (0, 1), retry.stderr
    assert sim.stats()["batch_lines"] == lines_before + found["server_error"]
    assert ids_once(out) == Counter(ids)


async def test_a_large_chunk_goes_up_as_a_file_and_lines_come_back_by_key(
    tmp_path: Path,
) -> None:
    # Ids that are paths, with spaces and non-ASCII: keys are matched back exactly.
    ids = [f"docs/ä {i}.md" for i in range(9)]
    requests = [BatchRequest(rid, CompletionRequest(prompt=f"sum {rid}")) for rid in ids]
    requests.append(BatchRequest("bad", CompletionRequest(prompt="x", max_tokens=-3)))
    config = SimulatorConfig(batch_seconds=0.3, api_key=KEY)
    async with Simulator(config) as sim:
        client = GeminiClient(base_url=sim.url, model=MODEL, api_key=KEY)
        backend = GeminiBatches(client, inline_max_bytes=0)  # every chunk as a file
        runner = BatchAPIRunner(
            client,
            BatchAPIConfig(tmp_path / "out.jsonl", poll_interval=0.05, max_requests=4),
            backend=backend,
        )
        results = {r.id: r async for r in runner.stream(requests)}
        stats = sim.stats()
        await client.aclose()
    assert set(results) == {*ids, "bad"}
    assert all(results[rid].ok and results[rid].response.batch_api for rid in ids)
    bad = results["bad"].error
    assert bad is not None and "INVALID_ARGUMENT" in str(bad) and "max_output_tokens" in str(bad)
    # Three files up, three down; each deleted once its results were in.
    assert (stats["files_uploaded"], stats["batches_created"], stats["files_deleted"]) == (3, 3, 6)


def test_an_expired_batch_has_no_results_and_expired_realtime_redoes_them(
    start_sim: Start, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "0.5", "--batch-expire-after", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(12)]
    write_requests(inp, ids)
    assert cli(*run_args(sim, inp, out)).returncode == 1
    # Google: an expired job "will not have any results to retrieve".
    assert codes(out) == Counter({"batch_expired": 12})
    assert "expired" in read_out(out)[0]["error"]["message"]
    assert sim.stats()["batches_expired"] == 1
    out2 = tmp_path / "out2.jsonl"
    proc = cli(*run_args(sim, inp, out2, "--expired", "realtime"))
    assert proc.returncode == 0, proc.stderr
    lines = read_out(out2)
    assert ids_once(out2) == Counter(ids) and all(rec["error"] is None for rec in lines)
    assert not any(rec["llmbatch"].get("batch_api") for rec in lines)
    assert lines[0]["response"]["body"]["candidates"]  # answered by generateContent


def test_batches_cancel_ends_the_run_with_cancelled_lines(start_sim: Start, tmp_path: Path) -> None:
    sim = start_sim("--batch-seconds", "30")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(10)]
    write_requests(inp, ids)
    proc = start_cli(*run_args(sim, inp, out, "--batch-max-requests", "5"))
    wait_for(lambda: sum(bool(c["batch_id"]) for c in chunks(out)) == 2, "both batches created")
    cancel = cli("batches", "cancel", str(out))
    assert cancel.returncode == 0, cancel.stderr
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    assert ids_once(out) == Counter(ids)
    found = codes(out)
    assert found["batch_cancelled"] > 0 and set(found) <= {"ok", "batch_cancelled"}
    assert sim.stats()["batches_cancelled"] == 2


def test_a_failed_batch_fails_its_lines_saying_why(start_sim: Start, tmp_path: Path) -> None:
    sim = start_sim("--batch-seconds", "0.3", "--batch-fail-validation")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, ["a", "b"])
    assert cli(*run_args(sim, inp, out)).returncode == 1
    lines = read_out(out)
    assert codes(out) == Counter({"batch_failed": 2})
    assert "failed validation" in lines[0]["error"]["message"]


def test_batch_answers_are_checked_against_the_schema(start_sim: Start, tmp_path: Path) -> None:
    sim = start_sim("--batch-seconds", "0.3", "--invalid-rate", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(16)])
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    (tmp_path / "s.json").write_text(json.dumps(schema))
    assert cli(*run_args(sim, inp, out, "--schema", str(tmp_path / "s.json"))).returncode == 1
    lines = read_out(out)
    good = [rec for rec in lines if rec["error"] is None]
    assert good and all(isinstance(rec["llmbatch"]["parsed"]["a"], str) for rec in good)
    assert set(codes(out)) == {"ok", "invalid_output"}
    # The schema went natively, as the realtime request carries it.
    assert sim.stats()["structured"] == 16


def test_max_cost_is_reserved_per_batch(start_sim: Start, tmp_path: Path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, [f"q{i}" for i in range(30)], max_tokens=1000)
    # Worst case per request: 1,000 output tokens at $1.25/1M (half of $2.50) plus its input,
    # about $0.00126; $0.02 holds some fifteen of them, not thirty.
    proc = cli(*run_args(sim, inp, out, "--batch-max-requests", "10", "--max-cost", "0.02"))
    assert proc.returncode == 4, proc.stderr
    written = len(read_out(out))
    assert 0 < written < 30
    assert sim.stats()["batch_lines"] == written  # nothing sent that the budget did not hold


# -- crashes --------------------------------------------------------------------------------------


def test_kill_9_after_create_then_rerun_creates_each_batch_once(
    start_sim: Start, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "1.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(30)]
    write_requests(inp, ids)
    args = run_args(sim, inp, out, "--batch-max-requests", "10")
    proc = start_cli(*args)
    try:
        wait_for(lambda: any(c["batch_id"] for c in chunks(out)), "the first batch created")
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.communicate()
    assert sim.stats()["batches_created"] >= 1
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert ids_once(out) == Counter(ids)
    assert sim.stats()["batches_created"] == 3  # one per chunk, whatever the kill interrupted
    assert len(chunks(out)) == 3


def test_a_create_whose_answer_was_lost_is_found_by_display_name(
    start_sim: Start, tmp_path: Path
) -> None:
    # The first create is carried out but its answer is a 503: the retry must look first.
    sim = start_sim("--batch-seconds", "0.3", "--batch-lose-create", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(7)]
    write_requests(inp, ids)
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert sim.stats()["batches_created"] == 1
    assert ids_once(out) == Counter(ids)


def test_a_run_killed_between_create_and_its_record_is_reattached(
    start_sim: Start, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(6)]
    write_requests(inp, ids)

    async def half_submitted() -> None:
        # What a run killed right after its create leaves: the intent, and a batch at the
        # provider whose id was never recorded.
        client = GeminiClient(base_url=sim.url, model=MODEL, api_key=KEY)
        backend = GeminiBatches(client)
        ledger = Ledger.open(out, provider="gemini", base_url=client.base_url)
        ledger.ensure_directory()
        splitter = Splitter(ledger.directory, backend.caps, framing=backend.framing)
        for rid in ids:
            item = BatchRequest(rid, CompletionRequest(prompt=f"question {rid}", max_tokens=16))
            key, line, wire = backend.encode(item)
            assert splitter.add(key, rid, line, 1, wire=wire) is None
        (chunk,) = splitter.finish()
        record = ledger.add(chunk, time.time())
        await backend.create(record.key, chunk.input_path, None, f"{ledger.run_key}:0")
        await client.aclose()

    asyncio.run(half_submitted())
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert sim.stats()["batches_created"] == 1  # re-attached, not created again
    assert ids_once(out) == Counter(ids)


# -- pieces ---------------------------------------------------------------------------------------


def test_a_line_error_is_read_by_status_name_or_grpc_code() -> None:
    assert grpc_http_status({"code": 8, "message": "quota"}) == 429
    assert grpc_http_status({"code": 3}) == 400
    assert grpc_http_status({"code": 13, "status": "INTERNAL"}) == 500
    assert grpc_http_status({"code": 99, "status": "UNAVAILABLE"}) == 503
    assert grpc_http_status({"code": 404}) == 404  # an HTTP status is taken as it is
    assert grpc_http_status("broken") == 500


def test_batch_api_refuses_embeddings_per_line(tmp_path: Path) -> None:
    client = GeminiClient(base_url="http://127.0.0.1:9", model=MODEL, api_key=KEY)
    backend = GeminiBatches(client)
    with pytest.raises(Exception, match="chat requests"):
        backend.encode(BatchRequest("e", CompletionRequest(prompt="x", endpoint="embeddings")))
    key, line, wire = backend.encode(BatchRequest("a/b", CompletionRequest(prompt="hi")))
    assert (key, wire) == (f"models/{MODEL}", "a/b")
    assert json.loads(line) == {"key": "a/b", "request": client.body_for(CompletionRequest("hi"))}


# -- the official SDK against the simulator -------------------------------------------------------


def test_the_google_genai_sdk_runs_file_and_inline_batches_on_the_simulator(
    start_sim: Start, tmp_path: Path
) -> None:
    genai = pytest.importorskip("google.genai")
    from google.genai import types

    sim = start_sim("--batch-seconds", "0.3")
    sdk = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=sim.url, api_version="v1beta")
    )
    path = tmp_path / "requests.jsonl"
    lines = [
        {"key": f"k{i}", "request": {"contents": [{"parts": [{"text": f"q{i}"}], "role": "user"}]}}
        for i in range(3)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    uploaded = sdk.files.upload(
        file=str(path), config=types.UploadFileConfig(display_name="in", mime_type="jsonl")
    )
    assert uploaded.name.startswith("files/") and uploaded.size_bytes == path.stat().st_size
    job = sdk.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "from-file"})
    assert job.display_name == "from-file"
    job = _wait(sdk, job.name)
    assert job.state == types.JobState.JOB_STATE_SUCCEEDED
    results = [json.loads(x) for x in sdk.files.download(file=job.dest.file_name).splitlines()]
    assert [r["key"] for r in results] == ["k0", "k1", "k2"]
    assert all(r["response"]["candidates"][0]["content"]["parts"][0]["text"] for r in results)

    inline = sdk.batches.create(
        model=MODEL,
        src=[
            {"contents": [{"parts": [{"text": "hi"}], "role": "user"}], "metadata": {"key": "a"}},
            {"contents": [{"parts": [{"text": "yo"}], "role": "user"}], "metadata": {"key": "b"}},
        ],
        config={"display_name": "inline"},
    )
    inline = _wait(sdk, inline.name)
    answers = inline.dest.inlined_responses
    assert [r.metadata for r in answers] == [{"key": "a"}, {"key": "b"}]
    assert all(r.response.text for r in answers)
    assert {j.name for j in sdk.batches.list()} >= {job.name, inline.name}
    # One per page: the SDK follows nextPageToken through every page.
    assert {j.name for j in sdk.batches.list(config={"page_size": 1})} == {job.name, inline.name}
    assert sdk.files.get(name=uploaded.name).size_bytes == uploaded.size_bytes
    assert uploaded.name in {f.name for f in sdk.files.list()}
    sdk.files.delete(name=uploaded.name)
    assert uploaded.name not in {f.name for f in sdk.files.list()}
    sdk.batches.delete(name=inline.name)
    assert inline.name not in {j.name for j in sdk.batches.list()}

    slow = start_sim("--batch-seconds", "30")
    sdk2 = genai.Client(
        api_key=KEY, http_options=types.HttpOptions(base_url=slow.url, api_version="v1beta")
    )
    running = sdk2.batches.create(model=MODEL, src=[{"contents": "wait"}])
    sdk2.batches.cancel(name=running.name)
    assert _wait(sdk2, running.name).state == types.JobState.JOB_STATE_CANCELLED


def _wait(sdk: Any, name: str) -> Any:
    ended = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
    deadline = time.monotonic() + 60
    while True:
        job = sdk.batches.get(name=name)
        if job.state.name in ended:
            return job
        assert time.monotonic() < deadline, f"{name} still {job.state}"
        time.sleep(0.05)


def test_a_deadline_run_uses_gemini_batches_and_a_past_one_goes_realtime(
    start_sim: Start, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp = tmp_path / "in.jsonl"
    ids = [f"q{i}" for i in range(8)]
    write_requests(inp, ids)
    out = tmp_path / "out.jsonl"
    proc = cli(*run_args(sim, inp, out, "--finish-by", "1h", "--rpm", "600"))
    assert proc.returncode == 0, proc.stderr
    assert ids_once(out) == Counter(ids)
    assert all(rec["llmbatch"]["batch_api"] for rec in read_out(out))
    late = tmp_path / "late.jsonl"
    created = sim.stats()["batches_created"]
    proc = cli(*run_args(sim, inp, late, "--finish-by", "2020-01-01T00:00", "--rpm", "600"))
    assert proc.returncode == 0, proc.stderr
    assert ids_once(late) == Counter(ids)
    assert not any(rec["llmbatch"].get("batch_api") for rec in read_out(late))
    assert sim.stats()["batches_created"] == created  # nothing went to a batch


async def test_results_gone_from_the_provider_fail_their_lines_not_every_rerun(
    tmp_path: Path,
) -> None:
    # A results file deleted (by hand, or past its 48 hours) is answered 403 "... or it may
    # not exist": its lines fail for --retry-failed instead of every rerun stopping on it.
    out = tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(4)]
    requests = [BatchRequest(rid, CompletionRequest(prompt=rid)) for rid in ids]
    async with Simulator(SimulatorConfig(batch_seconds=0.5, api_key=KEY)) as sim:
        client = GeminiClient(base_url=sim.url, model=MODEL, api_key=KEY)
        backend = GeminiBatches(client, inline_max_bytes=0)
        submitted = asyncio.Event()

        def hear(event: object) -> None:
            if isinstance(event, BatchSubmitted):
                submitted.set()

        config = BatchAPIConfig(out, poll_interval=0.05, keep_files=True, listeners=[hear])
        first = BatchAPIRunner(client, config, backend=backend)

        async def until_created() -> None:
            async for _ in first.stream(requests):
                pass

        task = asyncio.ensure_future(until_created())
        await asyncio.wait_for(submitted.wait(), 60)
        task.cancel()  # as Ctrl-C does: the batch keeps running at the provider
        with contextlib.suppress(asyncio.CancelledError):
            await task
        name = chunks(out)[0]["batch_id"]
        info = await backend.get(name)
        while not info.ended:
            await asyncio.sleep(0.05)
            info = await backend.get(name)
        responses = info.raw["metadata"]["output"]["responsesFile"]
        await backend.api.json("DELETE", f"/v1beta/{responses}")
        again = BatchAPIRunner(client, config, backend=backend)
        results = [r async for r in again.stream(requests)]
        await client.aclose()
    assert sorted(r.id for r in results) == ids
    assert {getattr(r.error, "code", None) for r in results} == {"batch_failed"}
    assert "no longer at the provider" in str(results[0].error)
    assert [c["state"] for c in chunks(out)] == ["ended"]


async def test_an_upload_whose_answer_was_lost_is_found_by_name_and_used(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(5)]
    requests = [BatchRequest(rid, CompletionRequest(prompt=rid)) for rid in ids]
    async with Simulator(SimulatorConfig(batch_seconds=0.3, api_key=KEY)) as sim:
        client = GeminiClient(base_url=sim.url, model=MODEL, api_key=KEY)
        backend = GeminiBatches(client, inline_max_bytes=0)
        # What a run killed during its upload leaves: the intent, and the file at the
        # provider whose name was never recorded.
        ledger = Ledger.open(out, provider="gemini", base_url=client.base_url)
        ledger.ensure_directory()
        splitter = Splitter(ledger.directory, backend.caps, framing=backend.framing)
        for item in requests:
            key, line, wire = backend.encode(item)
            assert splitter.add(key, item.id, line, 1, wire=wire) is None
        (chunk,) = splitter.finish()
        ledger.add(chunk, time.time())
        await backend.upload(chunk.input_path, f"llmbatch-{ledger.run_key}-0.jsonl")
        config = BatchAPIConfig(out, poll_interval=0.05)
        runner = BatchAPIRunner(client, config, backend=backend)
        results = [r async for r in runner.stream(requests)]
        stats = sim.stats()
        await client.aclose()
    assert sorted(r.id for r in results) == ids and all(r.ok for r in results)
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)
    assert stats["files_deleted"] == 2  # that input and the responses: nothing left behind


def test_ctrl_c_leaves_gemini_batches_running_and_the_rerun_collects_them(
    start_sim: Start, tmp_path: Path
) -> None:
    import signal

    sim = start_sim("--batch-seconds", "1.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(12)]
    write_requests(inp, ids)
    args = run_args(sim, inp, out, "--batch-max-requests", "6")
    proc = start_cli(*args)
    wait_for(lambda: sum(bool(c["batch_id"]) for c in chunks(out)) == 2, "both batches created")
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert sim.stats()["batches_cancelled"] == 0
    rows = [json.loads(x) for x in cli("batches", "list", str(out), "--json").stdout.splitlines()]
    assert [r["state"] for r in rows] == ["created", "created"]
    assert all(r["batch_id"].startswith("batches/") for r in rows)
    assert {r["status"] for r in rows} <= {"BATCH_STATE_PENDING", "BATCH_STATE_RUNNING"}
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert ids_once(out) == Counter(ids)
    assert sim.stats()["batches_created"] == 2


async def test_llmbatch_run_from_python_through_the_gemini_batch_api(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from llmbatch import RunConfig
    from llmbatch import run as run_pipeline

    monkeypatch.setenv("GEMINI_API_KEY", KEY)
    requests = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"item {i}")) for i in range(5)]
    async with Simulator(SimulatorConfig(batch_seconds=0.3, api_key=KEY)) as sim:
        config = RunConfig(
            requests=requests,
            output=str(tmp_path / "out.jsonl"),
            provider="gemini",
            base_url=sim.url,
            model=MODEL,
            batch_api=True,
            poll_interval=0.05,
        )
        # `run` is synchronous; the simulator lives in this loop, so the run gets a thread.
        summary = await asyncio.to_thread(run_pipeline, config)
        created = sim.stats()["batches_created"]
    assert (summary.exit_code, summary.executor, created) == (0, "batch_api", 1)
    assert summary.stats.success_count == 5 and summary.spent > 0


async def test_look_ups_read_every_page_of_batches_and_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llmbatch.batch_api.gemini as gemini_batches

    monkeypatch.setattr(gemini_batches, "_PAGE", "1")  # one per page: every page is read
    async with Simulator(SimulatorConfig(batch_seconds=0.3)) as sim:
        client = GeminiClient(base_url=sim.url, model=MODEL, api_key=KEY)
        backend = GeminiBatches(client)
        path = tmp_path / "chunk.jsonl"
        _, line, _ = backend.encode(BatchRequest("a", CompletionRequest(prompt="hi")))
        path.write_bytes(line)
        made = [await backend.create(f"models/{MODEL}", path, None, f"t:{i}") for i in range(3)]
        names = [await backend.upload(path, f"f{i}.jsonl") for i in range(3)]
        found = [info async for info in backend.recent(0)]
        first = await backend.find_upload("f0.jsonl", path.stat().st_size, 0)
        missing = await backend.find_upload("f0.jsonl", path.stat().st_size + 1, 0)
        await client.aclose()
    assert {info.id for info in found} == {info.id for info in made}
    assert {info.tag for info in found} == {"t:0", "t:1", "t:2"}
    assert (first, missing) == (names[0], None)
