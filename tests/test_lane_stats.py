"""Answers and cost per lane (batch, flex, standard, priority) for an output file, read from its
sidecar index: `llmbatch stats`, `--stats-json`, the end-of-run summary and the report.

Real runs of the CLI against the simulator write one output through three lanes; the expected
costs are each line's own cost, grouped by what the line says served it, and the prices are
genai-prices' (gpt-4o-mini: a priority price, no flex price, so flex is batch-priced).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from llmbatch import BatchResult, CompletionResponse, Usage
from llmbatch.io.index import entries, ids, index_path
from llmbatch.io.journal import Journal, journal_stats

from .helpers import batch_run_args, cli, read_out

MODEL = "gpt-4o-mini"


def chat_line(rid: str, tier: str | None) -> dict[str, object]:
    """An input line in the OpenAI batch format, asking for `tier` in its own body."""
    body: dict[str, object] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"question {rid}"}],
        "max_tokens": 8,
    }
    if tier is not None:
        body["service_tier"] = tier
    return {"custom_id": rid, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_lines(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def lane(rec: dict[str, Any]) -> str:
    meta = rec["llmbatch"]
    if meta.get("batch_api"):
        return "batch"
    return {"flex": "flex", "priority": "priority"}.get(meta.get("service_tier"), "standard")


def expected(out: Path) -> tuple[Counter[str], dict[str, float], dict[str, Counter[str]]]:
    """Answers, cost and price lists per lane, from the output's lines themselves."""
    answers: Counter[str] = Counter()
    costs: dict[str, float] = {}
    priced: dict[str, Counter[str]] = {}
    for rec in read_out(out):
        if rec["error"] is not None:
            continue
        name = lane(rec)
        answers[name] += 1
        costs[name] = costs.get(name, 0.0) + rec["llmbatch"]["cost"]
        if "priced_as" in rec["llmbatch"]:
            priced.setdefault(name, Counter())[rec["llmbatch"]["priced_as"]] += 1
    return answers, costs, priced


def stats_json(out: Path) -> dict[str, Any]:
    done = cli("stats", str(out), "--json")
    assert done.returncode == 0, done.stderr
    loaded: dict[str, Any] = json.loads(done.stdout)
    return loaded


def assert_lanes(stats: dict[str, Any], out: Path) -> None:
    answers, costs, priced = expected(out)
    assert stats["answers_by_lane"] == {"standard": 20, "flex": 15, "batch": 10, "priority": 5}
    assert stats["answers_by_lane"] == dict(answers)
    assert stats["cost_by_lane"].keys() == costs.keys()
    for name, usd in costs.items():
        assert stats["cost_by_lane"][name] == pytest.approx(usd, rel=1e-9), name
    # gpt-4o-mini: no flex price (the batch one), a priority price of its own.
    assert stats["priced_by_lane"] == {"flex": {"batch": 15}, "priority": {"priority": 5}}
    assert {k: dict(v) for k, v in priced.items()} == stats["priced_by_lane"]
    # Same tokens, so a flex answer costs what a batch answer does, a priority one more
    # than a standard one.
    per = {name: costs[name] / answers[name] for name in answers}
    assert per["flex"] == pytest.approx(per["batch"], rel=0.05)
    assert per["priority"] > per["standard"] > per["flex"]


def write_v3_index(out: Path) -> None:
    """Replace `out`'s index with one in the previous format (LLMBIDX3: no lane, no price
    list; as the version before this one wrote it): same records, the flags byte alone."""
    data = index_path(out).read_bytes()
    head, body = data[:48], data[48:]
    new, old = struct.Struct("<IIIQIIIdddddqqqqd"), struct.Struct("<IIBxxxQIIIdddddqqqqd")
    records, pos = [], 0
    while pos < len(body):
        rec = new.unpack_from(body, pos)
        var = body[pos + new.size : pos + new.size + rec[1]]
        assert rec[2] >> 8 & 0xFF != 0xFF  # no named lane here: the var part is the same
        packed = old.pack(0, rec[1], rec[2] & 0xFF, *rec[3:])[4:] + var
        records.append(struct.pack("<I", zlib.crc32(packed)) + packed)
        pos += new.size + rec[1]
    index_path(out).write_bytes(b"LLMBIDX3" + head[8:] + b"".join(records))


def test_every_lane_of_an_output_is_counted_and_priced_from_its_index(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    out, stats_file, report = tmp_path / "out.jsonl", tmp_path / "stats.json", tmp_path / "r.html"
    # 10 lines through the batch API.
    write_lines(tmp_path / "batch.jsonl", [chat_line(f"b{i}", None) for i in range(10)])
    done = cli(*batch_run_args(sim, "openai", tmp_path / "batch.jsonl", out))
    assert done.returncode == 0, done.stderr
    # 15 flex, 5 priority, 20 standard: each line asks for its own tier, in one realtime run
    # into the same output, which writes the stats and the report of the whole output.
    rows = [chat_line(f"f{i}", "flex") for i in range(15)]
    rows += [chat_line(f"p{i}", "priority") for i in range(5)]
    rows += [chat_line(f"s{i}", None) for i in range(20)]
    write_lines(tmp_path / "live.jsonl", rows)
    done = cli(
        "run", str(tmp_path / "live.jsonl"), "-o", str(out), "--base-url", sim.url + "/v1",
        "--provider", "openai", "--model", MODEL, "--no-progress",
        "--stats-json", str(stats_file), "--report", str(report),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    # The index holds each line's lane and price list, as the journal says them.
    assert index_path(out).read_bytes()[:8] == b"LLMBIDX4"
    from_index = [(e.custom_id, e.lane, e.priced_as) for e in entries(out)]
    assert from_index == [
        (e.custom_id, e.lane, e.priced_as) for e in entries(out, trust_index=False)
    ]

    assert_lanes(stats_json(out), out)  # `llmbatch stats --json`
    assert_lanes(json.loads(stats_file.read_text()), out)  # the run's --stats-json
    # The end-of-run summary and the stats table name the lanes, costs and price lists.
    summary = done.stdout + done.stderr
    assert "answered by lane:" in summary and "priority 5 ($" in summary
    assert "at the priority price" in summary
    table = cli("stats", str(out)).stdout
    assert "lane: flex" in table and "at the batch price" in table
    # The report of the output: answers and cost per lane.
    html = report.read_text()
    assert "flex 15 ($" in html and "at the priority price" in html


def test_an_index_of_the_previous_format_is_never_read_as_having_no_lanes(
    start_sim, tmp_path: Path
) -> None:
    """An output whose index an older version wrote (no lane in its records): `stats` reads
    the lanes from the journal instead, and the next run rebuilds the index in the new
    format, from which `stats` reads them again."""
    sim = start_sim("--batch-seconds", "0.3")
    out = tmp_path / "out.jsonl"
    write_lines(tmp_path / "batch.jsonl", [chat_line(f"b{i}", None) for i in range(10)])
    assert cli(*batch_run_args(sim, "openai", tmp_path / "batch.jsonl", out)).returncode == 0
    rows = [chat_line(f"f{i}", "flex") for i in range(15)]
    rows += [chat_line(f"p{i}", "priority") for i in range(5)]
    rows += [chat_line(f"s{i}", None) for i in range(20)]
    write_lines(tmp_path / "live.jsonl", rows)
    live = (
        "run", str(tmp_path / "live.jsonl"), "-o", str(out), "--base-url", sim.url + "/v1",
        "--provider", "openai", "--model", MODEL, "--no-progress",
    )  # fmt: skip
    assert cli(*live).returncode == 0
    write_v3_index(out)
    assert_lanes(stats_json(out), out)  # read past the old index: the journal decides
    assert index_path(out).read_bytes()[:8] == b"LLMBIDX3"  # a reader never writes it
    again = cli(*live)  # nothing left to do; the run's open rebuilds the index
    assert again.returncode == 0, again.stderr
    assert index_path(out).read_bytes()[:8] == b"LLMBIDX4"
    assert [e.lane for e in entries(out)] == [e.lane for e in entries(out, trust_index=False)]
    assert_lanes(stats_json(out), out)


def test_a_tier_with_another_name_keeps_its_name_through_the_index(tmp_path: Path) -> None:
    """A reply naming a tier none of the four lanes is ("scale") is counted under its name,
    and the id after the name in the record still reads whole."""
    out = tmp_path / "out.jsonl"

    def served(rid: str, tier: str) -> BatchResult:
        response = CompletionResponse(
            "ok", model="m", usage=Usage(10, 2), raw={"model": "m", "service_tier": tier}
        )
        return BatchResult(rid, response=response, attempts=1, cost=0.002)

    with Journal(out) as journal:
        journal.write(served("a-1", "scale"))
        journal.write(served("a-2", "flex"))
        journal.write(served("a-3", "scale"))
    stats = journal_stats(out)
    assert stats.answers_by_lane == {"scale": 2, "flex": 1}
    assert stats.cost_by_lane == pytest.approx({"scale": 0.004, "flex": 0.002})
    assert [i[1] for i in ids(out)] == ["a-1", "a-2", "a-3"]
    assert [(e.custom_id, e.lane) for e in entries(out)] == [
        ("a-1", "scale"),
        ("a-2", "flex"),
        ("a-3", "scale"),
    ]
