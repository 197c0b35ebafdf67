"""`llmbatch run --batch-api` over HTTP against the simulator's batch APIs, as users run it.

The CLI runs as a real subprocess; crashes are real `kill -9`s; what the provider saw is read
from the simulator's /stats (files uploaded, batches created). The splitter and the ledger
are tested on real files.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from llmbatch.batch_api import (
    AnthropicBatches,
    BatchAPIConfig,
    BatchAPIRunner,
    BatchEnded,
    BatchPolled,
    BatchSubmitted,
    Ledger,
    LedgerError,
    OpenAIBatches,
    Splitter,
    ledger_paths,
    wire_id,
)
from llmbatch.batch_api.ledger import CREATED, UPLOADED, write_atomic
from llmbatch.batch_api.split import JSON_REQUESTS, JSONL, Caps, TooLarge, ids_digest
from llmbatch.clients import AnthropicClient, OpenAIClient
from llmbatch.errors import error_code
from llmbatch.io.journal import Journal
from llmbatch.io.sink import ResultSink
from llmbatch.types import BatchRequest, CompletionRequest

from .conftest import SimProcess
from .helpers import (
    batch_run_args,
    cli,
    ledger_chunks,
    read_out,
    start_cli,
    wait_for,
    write_requests,
)

# -- full runs -------------------------------------------------------------------------------


def test_openai_run_splits_into_batches_and_writes_every_line_once(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(25)]
    write_requests(inp, ids)
    proc = cli(*batch_run_args(sim, "openai", inp, out, "--batch-max-requests", "10"))
    assert proc.returncode == 0, proc.stderr
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines) == Counter(ids)
    for rec in lines:
        assert rec["error"] is None
        assert rec["llmbatch"]["batch_api"] is True
        # The same line a realtime run writes: the provider's chat completion body.
        assert rec["response"]["body"]["object"] == "chat.completion"
        assert rec["llmbatch"]["usage"]["completion_tokens"] > 0
    stats = sim.stats()
    assert stats["batches_created"] == 3  # 10 + 10 + 5
    assert stats["files_uploaded"] == 3
    # Inputs and outputs removed at the provider (no --keep-files); no error files.
    assert stats["files_deleted"] == 6
    assert [c["state"] for c in ledger_chunks(out)] == ["ended"] * 3
    # Not a terminal: one log line per change of a batch's status, unless --no-progress.
    assert "batch 0: submitted batch_" not in proc.stderr
    again = cli(
        *[a for a in batch_run_args(sim, "openai", inp, out) if a != "--no-progress"],
        "--retry-failed",
    )
    assert "submitted" not in again.stderr  # all done: nothing to submit
    # The usual tools read the file unchanged.
    assert "25" in cli("stats", str(out)).stdout


def test_anthropic_run_maps_unsafe_custom_ids_and_back(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = ["src/a b.py", "x" * 80, "llmb_0123", "plain-id_1", "naïve.txt", "q5"]
    write_requests(inp, ids)
    args = batch_run_args(sim, "anthropic", inp, out, "--batch-max-requests", "4")
    proc = cli(*[a for a in args if a != "--no-progress"])
    assert proc.returncode == 0, proc.stderr
    assert "batch 0: submitted msgbatch_" in proc.stderr
    assert (
        "batch 1: ended" in proc.stderr and "batch 1: completed, 2 line(s) written" in proc.stderr
    )
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines) == Counter(ids)
    assert all(rec["response"]["body"]["type"] == "message" for rec in lines)
    assert all(rec["llmbatch"]["batch_api"] for rec in lines)
    assert sim.stats()["batches_created"] == 2
    # Safe ids go as they are; the others (and our own prefix) are hashed.
    assert wire_id("plain-id_1") == "plain-id_1"
    assert wire_id("src/a b.py") != "src/a b.py" and wire_id("llmb_0123") != "llmb_0123"


# -- never paid twice --------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_kill_9_after_first_batch_then_rerun_creates_each_batch_once(
    start_sim, tmp_path, provider
) -> None:
    sim = start_sim("--batch-seconds", "1.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(30)]
    write_requests(inp, ids)
    args = batch_run_args(sim, provider, inp, out, "--batch-max-requests", "10")
    proc = start_cli(*args)
    try:
        wait_for(lambda: any(c["batch_id"] for c in ledger_chunks(out)), "the first batch created")
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.communicate()
    created_before = sim.stats()["batches_created"]
    assert created_before >= 1
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert Counter(rec["custom_id"] for rec in read_out(out)) == Counter(ids)
    assert sim.stats()["batches_created"] == 3  # one per chunk, whatever the kill interrupted
    assert len(ledger_chunks(out)) == 3


def _half_submitted(
    tmp_path: Path,
    sim: SimProcess,
    provider: str,
    out: Path,
    *,
    foreign: int = 0,
    upload_only: bool = False,
) -> int:
    """Do what a run killed right after its create does: intent recorded, batch created at
    the provider, its id never recorded; and `foreign` more batches of the same size created
    by someone else. Returns the number of ids."""
    ids = [f"q{i}" for i in range(7)]

    async def go() -> None:
        if provider == "openai":
            client: Any = OpenAIClient(base_url=sim.url + "/v1", api_key="sk", model="gpt-4o-mini")
            backend: Any = OpenAIBatches(client)
        else:
            client = AnthropicClient(base_url=sim.url, api_key="sk", model="claude-haiku-4-5")
            backend = AnthropicBatches(client)
        ledger = Ledger.open(out, provider=provider, base_url=client.base_url)
        ledger.ensure_directory()
        splitter = Splitter(ledger.directory, backend.caps, framing=backend.framing)
        for rid in ids:
            req = BatchRequest(rid, CompletionRequest(prompt=f"question {rid}", max_tokens=16))
            key, line, wire = backend.encode(req)
            assert splitter.add(key, rid, line, 1, wire=wire) is None
        (chunk,) = splitter.finish()
        record = ledger.add(chunk, time.time())
        if backend.uploads:
            name = f"llmbatch-{ledger.run_key}-0.jsonl"
            file_id = await backend.upload(chunk.input_path, name)
            if upload_only:  # killed before the file id was recorded
                await client.aclose()
                return
            record.file_id, record.state = file_id, UPLOADED
            ledger.save()
        for _ in range(1 + foreign):
            await backend.create(
                record.key, chunk.input_path, record.file_id, f"{ledger.run_key}:0"
            )
        await client.aclose()

    asyncio.run(go())
    return len(ids)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_create_whose_answer_was_lost_is_found_not_repeated(
    start_sim, tmp_path, provider
) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = _half_submitted(tmp_path, sim, provider, out)
    assert sim.stats()["batches_created"] == 1
    write_requests(inp, [f"q{i}" for i in range(n)])
    proc = cli(*batch_run_args(sim, provider, inp, out))
    assert proc.returncode == 0, proc.stderr
    assert sim.stats()["batches_created"] == 1  # re-attached, not created again
    assert Counter(rec["custom_id"] for rec in read_out(out)) == Counter(f"q{i}" for i in range(n))
    (chunk,) = ledger_chunks(out)
    assert chunk["state"] == "ended" and chunk["batch_id"]


def test_an_upload_whose_answer_was_lost_is_used_not_repeated(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = _half_submitted(tmp_path, sim, "openai", out, upload_only=True)
    write_requests(inp, [f"q{i}" for i in range(n)])
    proc = cli(*batch_run_args(sim, "openai", inp, out))
    assert proc.returncode == 0, proc.stderr
    stats = sim.stats()
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1)
    assert stats["files_deleted"] == 2  # that input and the output: nothing left behind
    assert Counter(rec["custom_id"] for rec in read_out(out)) == Counter(f"q{i}" for i in range(n))


def test_two_anthropic_batches_matching_a_lost_create_stop_the_run(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    n = _half_submitted(tmp_path, sim, "anthropic", out, foreign=1)
    write_requests(inp, [f"q{i}" for i in range(n)])
    proc = cli(*batch_run_args(sim, "anthropic", inp, out))
    assert proc.returncode == 2, proc.stderr
    assert "2 batches match it" in proc.stderr and proc.stderr.count("msgbatch_") >= 2
    assert sim.stats()["batches_created"] == 2  # nothing created on a guess
    assert not out.exists() or out.read_text() == ""


def test_ctrl_c_leaves_batches_running_and_the_rerun_collects_them(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "1.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(12)]
    write_requests(inp, ids)
    args = batch_run_args(sim, "openai", inp, out, "--batch-max-requests", "6")
    proc = start_cli(*args)
    wait_for(
        lambda: sum(bool(c["batch_id"]) for c in ledger_chunks(out)) == 2, "both batches created"
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "keep running" in err and "rerun the same command" in err
    assert sim.stats()["batches_cancelled"] == 0
    listed = cli("batches", "list", str(out))
    assert listed.returncode == 0, listed.stderr
    for chunk in ledger_chunks(out):
        assert chunk["batch_id"] in listed.stdout
    rows = [json.loads(x) for x in cli("batches", "list", str(out), "--json").stdout.splitlines()]
    assert [r["state"] for r in rows] == ["created", "created"]
    assert all("succeeded" in r for r in rows)  # asked the provider for the live status
    # The same output without --batch-api would send (and pay for) the lines the batches
    # are still running: refused, nothing written.
    before = out.read_bytes()
    realtime = cli(*[a for a in args if a != "--batch-api"])
    assert realtime.returncode == 2, realtime.stderr
    assert "2 provider batch(es) not collected yet" in realtime.stderr
    assert "Traceback" not in realtime.stderr and out.read_bytes() == before
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert Counter(rec["custom_id"] for rec in read_out(out)) == Counter(ids)
    assert sim.stats()["batches_created"] == 2


# -- every line accounted for ------------------------------------------------------------------


def test_expired_batch_keeps_partial_results_and_marks_the_rest(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.5", "--batch-expire-after", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(20)]
    write_requests(inp, ids)
    proc = cli(*batch_run_args(sim, "openai", inp, out, "--batch-max-requests", "10"))
    assert proc.returncode == 1, proc.stderr
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines) == Counter(ids)
    ok = [rec for rec in lines if rec["error"] is None]
    expired = [rec for rec in lines if rec["error"] and rec["error"]["code"] == "batch_expired"]
    assert ok and expired and len(ok) + len(expired) == 20
    assert sim.stats()["batches_expired"] == 2


def test_expired_realtime_sends_expired_lines_through_the_engine(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.5", "--batch-expire-after", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(20)]
    write_requests(inp, ids)
    proc = cli(*batch_run_args(sim, "anthropic", inp, out, "--expired", "realtime"))
    assert proc.returncode == 0, proc.stderr
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines) == Counter(ids)
    assert all(rec["error"] is None for rec in lines)
    by_batch = [rec for rec in lines if rec["llmbatch"].get("batch_api")]
    realtime = [rec for rec in lines if not rec["llmbatch"].get("batch_api")]
    assert by_batch and realtime
    assert sim.stats()["by_path"]["messages"] == len(realtime)


def test_retry_failed_resubmits_only_the_failed_lines(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3", "--batch-error-rate", "0.4", "--seed", "3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(30)]
    write_requests(inp, ids)
    args = batch_run_args(sim, "openai", inp, out)
    first = cli(*args)
    assert first.returncode == 1, first.stderr
    failed = {rec["custom_id"] for rec in read_out(out) if rec["error"]}
    assert failed and all(
        rec["error"]["code"] == "server_error" for rec in read_out(out) if rec["error"]
    )
    lines_before = sim.stats()["batch_lines"]
    again = cli(*args)  # without --retry-failed nothing is sent
    assert sim.stats()["batch_lines"] == lines_before, again.stderr
    retry = cli(*args, "--retry-failed")
    assert retry.returncode in (0, 1), retry.stderr
    assert sim.stats()["batch_lines"] == lines_before + len(failed)
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines) == Counter(ids)  # compacted
    assert len({rec["custom_id"] for rec in lines if rec["error"]}) < len(failed)


def test_results_gone_from_the_provider_fail_their_lines_not_every_rerun(
    start_sim, tmp_path
) -> None:
    # A finished batch whose result file was deleted (by hand, by its retention, by another
    # run) answered 404 on every rerun: the run stopped each time, "rerun to resume".
    import urllib.request

    sim = start_sim("--batch-seconds", "1.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(4)]
    write_requests(inp, ids)
    args = batch_run_args(sim, "openai", inp, out)
    proc = start_cli(*args)
    wait_for(lambda: any(c["batch_id"] for c in ledger_chunks(out)), "the batch created")
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    batch_id = ledger_chunks(out)[0]["batch_id"]

    def call(method: str, path: str) -> Any:
        req = urllib.request.Request(sim.url + "/v1" + path, method=method)
        req.add_header("Authorization", "Bearer sk-test")
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    wait_for(lambda: call("GET", f"/batches/{batch_id}")["status"] == "completed", "the end")
    call("DELETE", f"/files/{call('GET', f'/batches/{batch_id}')['output_file_id']}")
    rerun = cli(*args)
    assert rerun.returncode == 1, rerun.stderr
    lines = read_out(out)
    assert sorted(rec["custom_id"] for rec in lines) == sorted(ids)
    assert all(rec["error"]["code"] == "batch_failed" for rec in lines)
    assert "no longer at the provider" in lines[0]["error"]["message"]
    assert [c["state"] for c in ledger_chunks(out)] == ["ended"]
    assert sim.stats()["batches_created"] == 1


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_answers_are_checked_against_the_schema(provider, start_sim, tmp_path) -> None:
    # Unchecked, a batch reply that broke --schema was written as an answer and no answer
    # carried `parsed` (export then had no columns for it).
    sim = start_sim("--batch-seconds", "0.3", "--invalid-rate", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(16)]
    write_requests(inp, ids)
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    schema_file = tmp_path / "s.json"
    schema_file.write_text(json.dumps(schema))
    proc = cli(*batch_run_args(sim, provider, inp, out, "--schema", str(schema_file)))
    assert proc.returncode == 1, proc.stderr  # some invalid
    lines = read_out(out)
    assert sorted(rec["custom_id"] for rec in lines) == sorted(ids)
    good = [rec for rec in lines if rec["error"] is None]
    bad = [rec for rec in lines if rec["error"] is not None]
    assert good and bad
    assert all(isinstance(rec["llmbatch"]["parsed"]["a"], str) for rec in good)
    assert {rec["error"]["code"] for rec in bad} == {"invalid_output"}


def test_batches_cancel_ends_the_run_with_cancelled_lines(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "30")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = [f"q{i}" for i in range(10)]
    write_requests(inp, ids)
    proc = start_cli(*batch_run_args(sim, "openai", inp, out, "--batch-max-requests", "5"))
    wait_for(
        lambda: sum(bool(c["batch_id"]) for c in ledger_chunks(out)) == 2, "both batches created"
    )
    cancel = cli("batches", "cancel", str(out))
    assert cancel.returncode == 0, cancel.stderr
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, err
    lines = read_out(out)
    assert Counter(rec["custom_id"] for rec in lines) == Counter(ids)
    codes = Counter(rec["error"]["code"] if rec["error"] else "ok" for rec in lines)
    assert codes["batch_cancelled"] > 0 and set(codes) <= {"ok", "batch_cancelled"}
    assert sim.stats()["batches_cancelled"] == 2


def test_openai_validation_failure_names_the_bad_line(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, ["a0", "a1"], model="gpt-4o-mini")
    with inp.open("a") as f:  # no model on these lines, and no --model: the batch fails
        f.write(json.dumps({"id": "b0", "prompt": "x"}) + "\n")
        f.write(json.dumps({"id": "b1", "prompt": "y"}) + "\n")
    args = [
        a for a in batch_run_args(sim, "openai", inp, out) if a not in ("--model", "gpt-4o-mini")
    ]
    proc = cli(*args)
    assert proc.returncode == 1, proc.stderr
    lines = {rec["custom_id"]: rec for rec in read_out(out)}
    assert lines["a0"]["error"] is None and lines["a1"]["error"] is None
    for rid in ("b0", "b1"):
        error = lines[rid]["error"]
        assert error["code"] == "batch_failed"
        assert "line 1 of the batch (id 'b0')" in error["message"]
        assert "body.model" in error["message"]
    assert sim.stats()["batches_failed"] == 1


def test_anthropic_refused_create_names_the_bad_request(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_requests(inp, ["a0", "a1"], model="claude-haiku-4-5")
    with inp.open("a") as f:
        f.write(json.dumps({"id": "src/bad.py", "prompt": "x"}) + "\n")
    args = [
        a
        for a in batch_run_args(sim, "anthropic", inp, out)
        if a not in ("--model", "claude-haiku-4-5")
    ]
    proc = cli(*args)
    assert proc.returncode == 1, proc.stderr
    lines = read_out(out)
    assert {rec["custom_id"] for rec in lines} == {"a0", "a1", "src/bad.py"}
    for rec in lines:
        assert rec["error"]["code"] == "batch_failed"
        assert "requests.2 (id 'src/bad.py')" in rec["error"]["message"]
    assert sim.stats()["batches_created"] == 0


def test_batch_api_and_ray_are_refused_together(tmp_path) -> None:
    inp = tmp_path / "in.jsonl"
    write_requests(inp, ["a"])
    proc = cli("run", str(inp), "-o", str(tmp_path / "o.jsonl"), "--batch-api", "--ray")
    assert proc.returncode == 2
    assert "--batch-api and --ray do not combine" in proc.stderr


# -- the splitter and the ledger, on real files ------------------------------------------------


def _lines(splitter: Splitter, items: list[tuple[str, str, bytes, int]]) -> list[Any]:
    closed = [c for key, rid, line, t in items if (c := splitter.add(key, rid, line, t))]
    return closed + splitter.finish()


def test_splitter_respects_request_byte_and_token_caps(tmp_path) -> None:
    line = b'{"custom_id":"x","body":{}}\n'  # 28 bytes
    by_requests = _lines(
        Splitter(tmp_path, Caps(3, 10_000), framing=JSONL),
        [("k", f"r{i}", line, 1) for i in range(7)],
    )
    assert [c.count for c in by_requests] == [3, 3, 1]
    by_bytes = _lines(
        Splitter(tmp_path, Caps(100, 3 * len(line)), framing=JSONL, start=10),
        [("k", f"r{i}", line, 1) for i in range(7)],
    )
    assert [c.count for c in by_bytes] == [3, 3, 1]
    assert [c.n for c in by_bytes] == [10, 11, 12]
    for c in by_bytes:
        assert c.input_path.stat().st_size == c.bytes <= 3 * len(line)
    by_tokens = _lines(
        Splitter(tmp_path, Caps(100, 10_000, max_tokens=10), framing=JSONL, start=20),
        [("k", f"r{i}", line, 4) for i in range(5)],
    )
    assert [c.count for c in by_tokens] == [2, 2, 1]


def test_splitter_keeps_keys_apart_and_frames_a_json_body(tmp_path) -> None:
    items = [("m1" if i % 2 else "m2", f"r{i}", b'{"n":%d}' % i, 1) for i in range(6)]
    chunks = _lines(Splitter(tmp_path, Caps(10, 10_000), framing=JSON_REQUESTS), items)
    assert sorted(c.key for c in chunks) == ["m1", "m2"]
    for c in chunks:
        body = orjson.loads(c.input_path.read_bytes())
        assert len(body["requests"]) == c.count == 3
        ids = [orjson.loads(x) for x in c.ids_path.read_bytes().splitlines()]
        assert ids_digest(ids) == c.digest
        assert len(c.input_path.read_bytes()) == c.bytes


def test_splitter_refuses_a_request_larger_than_a_batch(tmp_path) -> None:
    splitter = Splitter(tmp_path, Caps(10, 50), framing=JSONL)
    with pytest.raises(TooLarge, match="at most 50"):
        splitter.add("k", "big", b"x" * 51, 1)


def test_ledger_saves_atomically_and_refuses_what_it_cannot_trust(tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    ledger = Ledger.open(out, provider="openai", base_url="http://h/v1")
    ledger.ensure_directory()
    splitter = Splitter(ledger.directory, Caps(10, 10_000), framing=JSONL)
    for i in range(4):
        splitter.add("k", f"id {i}", b"{}\n", 1)
    (chunk,) = splitter.finish()
    record = ledger.add(chunk, 123.0)
    record.file_id, record.batch_id, record.state = "file-1", "batch_1", CREATED
    ledger.save()
    path, _ = ledger_paths(out)
    # A crash mid-save leaves a temp file beside the ledger: the ledger itself is whole.
    (path.parent / (path.name + ".tmp")).write_bytes(b'{"version": 1, "provi')
    again = Ledger.open(out, provider="openai", base_url="http://h/v1")
    assert again.run_key == ledger.run_key
    (loaded,) = again.chunks
    assert (loaded.file_id, loaded.batch_id, loaded.state) == ("file-1", "batch_1", CREATED)
    assert again.ids(loaded) == [f"id {i}" for i in range(4)]
    write_atomic(path, path.read_bytes())  # the temp file is reused and renamed away
    assert not (path.parent / (path.name + ".tmp")).exists()
    with pytest.raises(LedgerError, match="records batches at openai http://h/v1"):
        Ledger.open(out, provider="anthropic", base_url="http://h")
    ledger.ids_path(loaded.n).write_text('"id 0"\n"id 1"\n"id 2"\n"other"\n')
    with pytest.raises(LedgerError, match="does not hold the 4 ids"):
        again.ids(loaded)
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="cannot be read"):
        Ledger.open(out, provider="openai", base_url="http://h/v1")


# -- the library face ----------------------------------------------------------------------------


def test_runner_reports_events_and_backs_off_between_polls(start_sim, tmp_path) -> None:
    # A batch that finishes nothing until its window passes: a long stretch without change.
    sim = start_sim(
        "--batch-seconds", "0.2", "--batch-stall-rate", "1", "--batch-expire-seconds", "1.5"
    )
    events: list[Any] = []
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:  # never waits the interval itself
        sleeps.append(seconds)
        await asyncio.sleep(0.005)

    async def go() -> list[Any]:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk", model="gpt-4o-mini")
        config = BatchAPIConfig(
            tmp_path / "out.jsonl",
            poll_interval=0.1,
            max_poll_interval=0.5,
            listeners=[events.append],
            sleep=sleep,
        )
        requests = [
            BatchRequest(f"r{i}", CompletionRequest(prompt=f"q {i}", max_tokens=8))
            for i in range(5)
        ]
        try:
            return [r async for r in BatchAPIRunner(client, config).stream(requests)]
        finally:
            await client.aclose()

    results = asyncio.run(go())
    assert sorted(r.id for r in results) == [f"r{i}" for i in range(5)]
    assert all(error_code(r.error) == "batch_expired" for r in results)
    kinds = [type(e) for e in events]
    assert kinds[0] is BatchSubmitted and kinds[-1] is BatchEnded
    assert BatchPolled in kinds
    assert events[-1].outcome == "expired" and events[-1].written == 5
    # Backoff: first the base interval; then x1.5 while nothing changes, capped; back to the
    # base after a change of status.
    assert sleeps[0] == 0.1 and max(sleeps) <= 0.5
    grew = [b for a, b in itertools.pairwise(sleeps) if b > a]
    assert grew and all(
        b == pytest.approx(min(a * 1.5, 0.5)) for a, b in itertools.pairwise(sleeps) if b > a
    )
    assert 0.5 in sleeps  # reached the cap while the batch ran


def test_mixed_endpoints_go_to_separate_openai_batches(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [
        {"custom_id": "e0", "method": "POST", "url": "/v1/embeddings", "body": {"input": "a"}},
        {
            "custom_id": "c0",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"messages": [{"role": "user", "content": "hi"}]},
        },
        {"custom_id": "e1", "method": "POST", "url": "/v1/embeddings", "body": {"input": "b"}},
    ]
    inp.write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = cli(*batch_run_args(sim, "openai", inp, out))
    assert proc.returncode == 0, proc.stderr
    recs = {rec["custom_id"]: rec for rec in read_out(out)}
    assert set(recs) == {"e0", "e1", "c0"}
    assert recs["e0"]["response"]["body"]["data"][0]["embedding"]
    assert recs["c0"]["response"]["body"]["object"] == "chat.completion"
    assert sim.stats()["batches_created"] == 2


def test_a_refused_key_stops_the_run_with_a_message_not_a_traceback(tmp_path) -> None:
    with SimProcess("--api-key-env", "SIM_KEY", env={"SIM_KEY": "the-right-key"}) as sim:
        inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
        write_requests(inp, ["a", "b"])
        proc = cli(*batch_run_args(sim, "openai", inp, out))  # sends sk-test
    assert proc.returncode == 2, proc.stderr
    assert "the batch API failed" in proc.stderr and "401" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "rerun the same command" in proc.stderr


def test_stopped_mid_merge_the_rerun_writes_only_the_missing_answers(start_sim, tmp_path) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    out = tmp_path / "out.jsonl"
    requests = [
        BatchRequest(f"r{i}", CompletionRequest(prompt=f"q {i}", max_tokens=8)) for i in range(12)
    ]

    async def run(stop_after: int | None) -> int:
        client = OpenAIClient(base_url=sim.url + "/v1", api_key="sk", model="gpt-4o-mini")
        journal = Journal(out)
        scan = journal.open()
        sink = ResultSink(journal, expected=len(requests))
        runner = BatchAPIRunner(client, BatchAPIConfig(out, poll_interval=0.05))
        todo = [r for r in requests if not scan.is_ok(r.id)]
        try:
            stream = runner.stream(todo, done=scan.is_ok, flush=sink.flush)
            async with contextlib.aclosing(stream) as results:
                async for result in results:
                    sink.write(result)
                    if sink.written == stop_after:
                        break  # the process dies here: the batch is not marked collected
            sink.close()
        finally:
            sink.abandon()
            await client.aclose()
        return sink.written

    assert asyncio.run(run(stop_after=5)) == 5
    (chunk,) = ledger_chunks(out)
    assert chunk["state"] == "created"  # not collected: the rerun re-attaches
    assert asyncio.run(run(stop_after=None)) == 7  # only the answers not yet written
    assert Counter(rec["custom_id"] for rec in read_out(out)) == Counter(r.id for r in requests)
    assert sim.stats()["batches_created"] == 1
    assert ledger_chunks(out)[0]["state"] == "ended"


@pytest.mark.parametrize(
    ("provider", "raw"),
    [
        ("openai", b"not json"),
        ("openai", b'{"id": "batch_req_1"}'),  # no custom_id
        ("anthropic", b'{"custom_id": "a"}'),  # no result
        ("anthropic", b'{"custom_id": "a", "result": "x"}'),  # a result that is no object
    ],
)
def test_a_result_line_that_cannot_be_read_is_an_invalid_response_quoting_it(
    provider: str, raw: bytes
) -> None:
    from llmbatch.batch_api import anthropic, openai
    from llmbatch.errors import InvalidResponseError

    outcome = {"openai": openai._outcome, "anthropic": anthropic._outcome}[provider]
    with pytest.raises(InvalidResponseError, match="a batch result line is not valid") as err:
        outcome(raw)
    assert repr(raw[:20])[2:-1] in str(err.value)
