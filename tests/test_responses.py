"""OpenAI Responses API lines (`/v1/responses`): realtime, batch, resume, cost, schemas, export.

Everything talks HTTP to the simulator (in this process for the official SDK, `llmbatch
simulate` for the CLI); the CLI runs as a subprocess, as users run it.
"""

from __future__ import annotations

import asyncio
import csv
import json
from pathlib import Path
from typing import Any

import openai
import pydantic
import pytest
from openai.types.responses import Response

import llmbatch
from llmbatch import BadRequestError, BatchRequest, CompletionRequest, Schema, ServerError
from llmbatch.clients import OpenAIClient
from llmbatch.io.formats import BadLine, InputItem, parse_line
from llmbatch.pipeline import RunConfig
from llmbatch.replies import check_reply
from llmbatch.simulate import Simulator, SimulatorConfig
from llmbatch.types import Usage

from .helpers import (
    batch_run_args,
    cli,
    ids_once,
    ledger_chunks,
    read_out,
    run_args,
    start_cli,
    wait_for,
)

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["label", "score"],
    "additionalProperties": False,
}


class Verdict(pydantic.BaseModel):
    label: str
    score: int


def responses_line(rid: str, prompt: str, **body: Any) -> dict[str, Any]:
    """An OpenAI batch-format line for /v1/responses."""
    payload = {"model": "gpt-4o-mini", "input": prompt, "max_output_tokens": 40, **body}
    return {"custom_id": rid, "method": "POST", "url": "/v1/responses", "body": payload}


def chat_line(rid: str, text: str) -> dict[str, Any]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}]}
    return {"custom_id": rid, "method": "POST", "url": "/v1/chat/completions", "body": body}


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def output_text(body: dict[str, Any]) -> str:
    """What openai-python's `Response.output_text` gives for a reply body."""
    return Response.model_validate(body).output_text


def priced(meta: dict[str, Any], price_in: float, price_out: float, cached_in: float) -> float:
    usage = meta["usage"]
    cached = usage.get("cached_tokens", 0)
    return (
        (usage["prompt_tokens"] - cached) * price_in
        + cached * cached_in
        + usage["completion_tokens"] * price_out
    ) / 1e6


# -- the simulator, driven by the official SDK --------------------------------------------------


async def test_the_official_sdk_gets_parsed_responses_from_the_simulator() -> None:
    async with Simulator(SimulatorConfig(prompt_cache=True)) as sim:
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=sim.url + "/v1", max_retries=0)
        reply = await client.responses.create(
            model="gpt-4o-mini", input="Name a colour", instructions="Be brief",
            service_tier="flex", max_output_tokens=30,
        )  # fmt: skip
        assert isinstance(reply, Response) and reply.status == "completed"
        assert reply.output_text and reply.output[0].type == "message"
        assert reply.service_tier == "flex" and reply.instructions == "Be brief"
        assert reply.usage is not None and reply.usage.input_tokens == 6  # 22 characters / 4, up
        assert reply.usage.output_tokens > 0 and reply.usage.input_tokens_details.cached_tokens == 0

        structured = await client.responses.create(
            model="gpt-4o-mini",
            input=[{"role": "user", "content": "Classify: the sky"}],
            text={"format": {"type": "json_schema", "name": "verdict", "schema": SCHEMA}},
        )
        Verdict.model_validate_json(structured.output_text)  # shaped by text.format

        # The prompt cache answers a repeated long prefix from the cache, in the Responses
        # usage shape (input_tokens counts the cached tokens too).
        long = "shared instructions " * 300  # 6,000 characters: 1,500 tokens
        first = await client.responses.create(model="gpt-4o-mini", instructions=long, input="a")
        second = await client.responses.create(model="gpt-4o-mini", instructions=long, input="b")
        assert first.usage is not None and first.usage.input_tokens_details.cached_tokens == 0
        assert second.usage is not None
        assert 1024 <= second.usage.input_tokens_details.cached_tokens <= second.usage.input_tokens

        # A model cut off at max_output_tokens: status incomplete, and the reason why.
        cut = await client.responses.create(
            model="gpt-4o-mini", input="Classify: a long one", max_output_tokens=2,
            text={"format": {"type": "json_schema", "name": "verdict", "schema": SCHEMA}},
        )  # fmt: skip
        assert cut.status == "incomplete" and cut.incomplete_details is not None
        assert cut.incomplete_details.reason == "max_output_tokens"
        assert sim.stats()["by_path"]["responses"] == 5


async def test_a_responses_batch_round_trips_through_the_official_sdk(tmp_path: Path) -> None:
    lines = [responses_line(f"r{i}", f"question {i}") for i in range(3)]
    write_lines(tmp_path / "in.jsonl", lines)
    async with Simulator(SimulatorConfig(batch_seconds=0.2)) as sim:
        client = openai.AsyncOpenAI(api_key="sk-test", base_url=sim.url + "/v1", max_retries=0)
        uploaded = await client.files.create(file=tmp_path / "in.jsonl", purpose="batch")
        batch = await client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/responses", completion_window="24h"
        )
        assert batch.endpoint == "/v1/responses"
        while batch.status not in ("completed", "failed", "expired", "cancelled"):
            await asyncio.sleep(0.1)
            batch = await client.batches.retrieve(batch.id)
        assert batch.status == "completed" and batch.output_file_id
        content = await client.files.content(batch.output_file_id)
        got = [json.loads(x) for x in content.text.splitlines()]
    assert sorted(g["custom_id"] for g in got) == ["r0", "r1", "r2"]
    for g in got:
        reply = Response.model_validate(g["response"]["body"])
        assert g["response"]["status_code"] == 200 and reply.output_text
        assert reply.usage is not None and reply.usage.output_tokens > 0


# -- the client and the line format ------------------------------------------------------------


async def test_the_client_sends_responses_requests_and_reads_text_usage_and_refusals() -> None:
    async with Simulator(SimulatorConfig(refusal_rate=0.5, seed=3)) as sim:
        client = OpenAIClient(api_key="sk-test", base_url=sim.url + "/v1", model="gpt-4o-mini")
        async with client:
            request = CompletionRequest(
                prompt="Classify: rain", system="Label it", endpoint="responses", schema=Verdict
            )
            body = client.body_for(request)
            assert body["instructions"] == "Label it" and body["input"] == "Classify: rain"
            assert body["text"]["format"]["type"] == "json_schema" and "messages" not in body
            replies = []
            for i in range(8):
                asked = CompletionRequest(
                    prompt=f"Classify: {i}", endpoint="responses", schema=Verdict
                )
                replies.append(await client.complete(asked))
    refused = [r for r in replies if r.refusal]
    answered = [r for r in replies if not r.refusal]
    assert refused and answered  # both kinds came back, each read from the output items
    for reply in answered:
        Verdict.model_validate_json(reply.content)
        assert reply.content == output_text(reply.raw) and reply.finish_reason == "completed"
        assert reply.usage.prompt_tokens == reply.raw["usage"]["input_tokens"]
        assert reply.usage.completion_tokens == reply.raw["usage"]["output_tokens"]


async def test_a_schema_in_prompt_mode_goes_in_the_instructions_with_json_mode() -> None:
    request = CompletionRequest(
        prompt="Classify: fog", endpoint="responses", schema=Schema.of(Verdict, mode="prompt")
    )
    async with Simulator(SimulatorConfig()) as sim:
        client = OpenAIClient(api_key="sk-test", base_url=sim.url + "/v1", model="gpt-4o-mini")
        async with client:
            body = client.body_for(request)
            reply = await client.complete(request)
    assert body["text"] == {"format": {"type": "json_object"}}
    assert "JSON Schema" in body["instructions"]
    assert check_reply(request, reply) == Verdict.model_validate_json(reply.content)


def test_usage_reads_cached_and_cache_written_input_tokens() -> None:
    usage = {
        "input_tokens": 3000,
        "input_tokens_details": {"cached_tokens": 2048, "cache_write_tokens": 512},
        "output_tokens": 90,
        "output_tokens_details": {"reasoning_tokens": 64},
        "total_tokens": 3090,
    }
    body = {"object": "response", "status": "completed", "output": [], "usage": usage}
    request = CompletionRequest(prompt="x", endpoint="responses")
    reply = OpenAIClient(api_key="x", model="m").parse(request, 200, {}, body)
    assert reply.usage == Usage(3000, 90, cached_tokens=2048, cache_write_tokens=512)
    assert reply.content == "" and reply.finish_reason == "completed"


def test_a_failed_response_is_an_error_by_its_code() -> None:
    client = OpenAIClient(api_key="x", model="m")
    request = CompletionRequest(prompt="x", endpoint="responses")

    def failed(code: str) -> dict[str, Any]:
        error = {"code": code, "message": "it went wrong"}
        return {"object": "response", "status": "failed", "error": error, "output": []}

    with pytest.raises(ServerError, match="server_error"):  # retried
        client.parse(request, 200, {}, failed("server_error"))
    with pytest.raises(BadRequestError, match="invalid_prompt"):  # the request's fault
        client.parse(request, 200, {}, failed("invalid_prompt"))


def test_lines_name_their_endpoint_and_bad_ones_are_refused_by_line() -> None:
    def parse(obj: dict[str, Any], endpoint: str = "chat") -> InputItem | BadLine | None:
        return parse_line(json.dumps(obj).encode(), 7, endpoint)  # type: ignore[arg-type]

    line = responses_line(
        "a", "", input=[{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
        instructions="sys", text={"format": {"type": "json_schema", "name": "v", "schema": SCHEMA},
                                  "verbosity": "low"},
        service_tier="flex",
    )  # fmt: skip
    item = parse(line)
    assert isinstance(item, InputItem)
    request = item.request
    assert request.endpoint == "responses" and request.system == "sys"
    assert request.max_tokens == 40 and request.schema is not None
    assert request.extra == {"text": {"verbosity": "low"}, "service_tier": "flex"}
    # Sent back as it came: the schema in text.format beside the line's own text options.
    body = OpenAIClient(api_key="x", model="m").body_for(request)
    assert body["text"]["verbosity"] == "low" and body["text"]["format"]["name"] == "v"
    assert body["input"] == line["body"]["input"] and body["max_output_tokens"] == 40

    simple = parse({"id": "s", "prompt": "hi"}, "responses")
    assert isinstance(simple, InputItem) and simple.request.endpoint == "responses"
    # A batch line's url wins over the reader's endpoint.
    chat = parse(chat_line("c", "hi"), "responses")
    assert isinstance(chat, InputItem) and chat.request.endpoint == "chat"

    wrong_url = parse({**chat_line("c", "hi"), "body": line["body"]})
    assert isinstance(wrong_url, BadLine) and str(wrong_url).startswith("line 7: ")
    assert "/v1/responses" in str(wrong_url)
    chat_fields = parse(responses_line("r", "hi", messages=[]))
    assert isinstance(chat_fields, BadLine) and "body.messages is a chat field" in str(chat_fields)
    no_input = parse(responses_line("r", ""))
    assert isinstance(no_input, BadLine) and "body.input" in str(no_input)
    bad_format = parse(responses_line("r", "hi", text={"format": {"type": "xml"}}))
    assert isinstance(bad_format, BadLine) and "body.text.format" in str(bad_format)


# -- runs from the CLI and from Python ---------------------------------------------------------


def test_cli_realtime_mixed_file_costs_usage_times_price_and_exports_the_text(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim("--latency-ms", "5")
    inp, out, exported = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "out.csv"
    lines = [responses_line(f"r{i}", f"question {i}") for i in range(6)]
    lines += [chat_line(f"c{i}", f"question {i}") for i in range(4)]
    lines += [{"id": f"s{i}", "prompt": f"simple {i}"} for i in range(3)]
    write_lines(inp, lines)
    prices = ["--price-in", "1.5", "--price-out", "6", "--price-cached-in", "0.5"]
    done = cli(*run_args(sim, inp, out, *prices, "--endpoint", "responses"))
    assert done.returncode == 0, done.stderr
    by_path = sim.stats()["by_path"]
    # Simple lines follow --endpoint; batch-format lines their own url.
    assert by_path == {"responses": 9, "chat": 4}
    records = {rec["custom_id"]: rec for rec in read_out(out)}
    assert len(records) == 13
    for rid, rec in records.items():
        assert rec["error"] is None
        body, meta = rec["response"]["body"], rec["llmbatch"]
        kind = "chat.completion" if rid.startswith("c") else "response"
        assert body["object"] == kind
        if kind == "response":
            assert meta["usage"]["prompt_tokens"] == body["usage"]["input_tokens"]
            assert meta["usage"]["completion_tokens"] == body["usage"]["output_tokens"]
        assert meta["cost"] == pytest.approx(priced(meta, 1.5, 6, 0.5), rel=1e-9)
    assert cli("export", str(out), "-o", str(exported), "--input", str(inp)).returncode == 0
    rows = list(csv.DictReader(exported.open()))
    assert [r["id"] for r in rows] == [line.get("custom_id") or line["id"] for line in lines]
    for row in rows:
        body = records[row["id"]]["response"]["body"]
        text = output_text(body) if body["object"] == "response" else None
        assert row["reply"] and row["reply"] == (text or body["choices"][0]["message"]["content"])


def test_cli_resume_sends_only_the_responses_lines_not_yet_done(start_sim, tmp_path: Path) -> None:
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(inp, [responses_line(f"r{i}", f"question {i}") for i in range(5)])
    assert cli(*run_args(sim, inp, out)).returncode == 0
    write_lines(inp, [responses_line(f"r{i}", f"question {i}") for i in range(8)])
    again = cli(*run_args(sim, inp, out))
    assert again.returncode == 0, again.stderr
    assert sim.stats()["by_path"]["responses"] == 8  # 5, then only the 3 new ones
    assert ids_once(out) == {f"r{i}": 1 for i in range(8)}


def test_cli_batch_api_runs_responses_and_chat_lines_in_separate_batches(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [responses_line(f"r{i}", f"question {i}") for i in range(5)]
    lines += [chat_line(f"c{i}", f"question {i}") for i in range(3)]
    write_lines(inp, lines)
    prices = ["--price-in", "2", "--price-out", "8"]
    done = cli(*batch_run_args(sim, "openai", inp, out, *prices))
    assert done.returncode == 0, done.stderr
    stats = sim.stats()
    assert stats["batches_created"] == 2  # a batch holds one endpoint
    records = {rec["custom_id"]: rec for rec in read_out(out)}
    assert sorted(records) == sorted(line["custom_id"] for line in lines)
    for rid, rec in records.items():
        meta, body = rec["llmbatch"], rec["response"]["body"]
        assert rec["error"] is None and meta["batch_api"] is True
        assert body["object"] == ("response" if rid.startswith("r") else "chat.completion")
        assert meta["cost"] == pytest.approx(priced(meta, 2, 8, 2) / 2, rel=1e-9)  # batch price


def test_cli_finish_by_answers_responses_lines_through_a_batch_at_half_price(
    start_sim, tmp_path: Path
) -> None:
    """Every line goes into a provider batch, and the lane stats say so. No flex: sold at the
    batch price, it takes the batches' work while it has room, and the lines could all be
    answered realtime; the deadline is far off, so the cheap plan (all batch) holds."""
    sim = start_sim("--batch-seconds", "0.3")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    stats_json = tmp_path / "stats.json"
    write_lines(inp, [responses_line(f"r{i}", f"question {i}") for i in range(6)])
    args = run_args(sim, inp, out, "--finish-by", "2h", "--stats-json", str(stats_json))
    done = cli(*args, "--poll-interval", "0.1", "--price-in", "1", "--price-out", "1")
    assert done.returncode == 0, done.stderr
    records = read_out(out)
    assert ids_once(out) == {f"r{i}": 1 for i in range(6)}
    for rec in records:
        meta = rec["llmbatch"]
        assert rec["error"] is None and rec["response"]["body"]["object"] == "response"
        assert meta.get("batch_api") is True
        assert meta["cost"] == pytest.approx(priced(meta, 1, 1, 1) / 2, rel=1e-9)  # half price
    stats = json.loads(stats_json.read_text())
    assert stats["answers_by_lane"] == {"batch": 6}  # the batch lane, and only it
    assert sim.stats()["batches_created"] >= 1


def test_kill_9_during_a_mixed_batch_run_then_a_rerun_pays_each_batch_once(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim("--batch-seconds", "1.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    lines = [responses_line(f"r{i}", f"question {i}") for i in range(10)]
    lines += [chat_line(f"c{i}", f"question {i}") for i in range(5)]
    write_lines(inp, lines)
    args = batch_run_args(sim, "openai", inp, out, "--batch-max-requests", "5")
    proc = start_cli(*args)
    try:
        wait_for(lambda: any(c["batch_id"] for c in ledger_chunks(out)), "the first batch created")
    finally:
        proc.kill()  # SIGKILL: no cleanup of any kind
        proc.communicate()
    rerun = cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    assert ids_once(out) == {line["custom_id"]: 1 for line in lines}
    chunks = ledger_chunks(out)
    assert len(chunks) == 3  # 5 + 5 responses lines, 5 chat lines
    assert sim.stats()["batches_created"] == 3  # whatever the kill interrupted


def test_cli_schema_on_responses_lines_reasks_then_fails_the_line_with_its_reply(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim("--invalid-rate", "1")
    inp, out, schema = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    write_lines(inp, [responses_line(f"r{i}", f"classify {i}") for i in range(4)])
    done = cli(*run_args(sim, inp, out, "--schema", str(schema), "--max-invalid-retries", "1"))
    assert done.returncode == 1
    # Each line asked, was re-asked once on the Responses route, and failed with its reply.
    assert sim.stats()["by_path"] == {"responses": 8}
    for rec in read_out(out):
        assert rec["error"]["code"] == "invalid_output"
        assert rec["response"]["body"]["object"] == "response"
        json.loads(output_text(rec["response"]["body"]))  # JSON, but off the schema


def test_cli_truncated_structured_responses_reply_is_no_answer(start_sim, tmp_path: Path) -> None:
    sim = start_sim()
    inp, out, schema = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "s.json"
    schema.write_text(json.dumps(SCHEMA))
    write_lines(inp, [responses_line("r0", "classify", max_output_tokens=2)])
    done = cli(*run_args(sim, inp, out, "--schema", str(schema)))
    assert done.returncode == 1
    (rec,) = read_out(out)
    assert rec["error"]["code"] == "truncated" and "max_output_tokens" in rec["error"]["message"]


def test_cli_refuses_a_chat_url_with_a_responses_body_naming_the_line(
    start_sim, tmp_path: Path
) -> None:
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    wrong = {**chat_line("c1", "x"), "body": responses_line("c1", "hi")["body"]}
    write_lines(inp, [responses_line("r0", "hi"), wrong])
    done = cli(*run_args(sim, inp, out))
    assert done.returncode == 2
    assert "line 2" in done.stderr and "/v1/responses" in done.stderr
    assert sim.stats()["received"] == 0
    anthropic = cli(*run_args(sim, inp, out, "--endpoint", "responses", "--provider", "anthropic"))
    assert anthropic.returncode == 2 and "--endpoint" in anthropic.stderr


def test_python_run_with_responses_requests_a_schema_and_cached_prefixes(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = start_sim()  # its prompt cache is on by default
    out = tmp_path / "out.jsonl"
    monkeypatch.setenv("LLMBATCH_TEST_KEY", "sk-test")
    shared = "You label weather reports. " * 250  # a prefix the provider caches
    items = [
        BatchRequest(
            f"p{i}",
            CompletionRequest(prompt=f"report {i}", system=shared, endpoint="responses"),
        )
        for i in range(12)
    ]
    config = RunConfig(
        requests=items, output=str(out), base_url=sim.url + "/v1", model="gpt-4o-mini",
        api_key_env="LLMBATCH_TEST_KEY", schema=Verdict,
        price_in=1.0, price_out=4.0, price_cached_in=0.25,
    )  # fmt: skip
    summary = llmbatch.run(config)
    assert summary.stats.success_count == 12
    records = read_out(out)
    assert sim.stats()["by_path"] == {"responses": 12}
    cached = [r for r in records if r["llmbatch"]["usage"].get("cached_tokens")]
    assert cached  # cached input tokens read from input_tokens_details, and priced lower
    for rec in records:
        meta = rec["llmbatch"]
        Verdict.model_validate(meta["parsed"])
        assert meta["cost"] == pytest.approx(priced(meta, 1.0, 4.0, 0.25), rel=1e-9)
        assert (
            meta["usage"].get("cached_tokens", 0)
            == (rec["response"]["body"]["usage"]["input_tokens_details"]["cached_tokens"])
        )


def test_python_run_endpoint_sends_template_rows_to_responses(
    start_sim, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = start_sim()
    rows, out = tmp_path / "rows.csv", tmp_path / "out.jsonl"
    rows.write_text("id,text\n" + "".join(f"t{i},line {i}\n" for i in range(4)))
    monkeypatch.setenv("LLMBATCH_TEST_KEY", "sk-test")
    config = RunConfig(
        template="Summarize: {text}", rows=str(rows), output=str(out), endpoint="responses",
        base_url=sim.url + "/v1", model="gpt-4o-mini", api_key_env="LLMBATCH_TEST_KEY",
        service_tier="flex", price_in=1.0, price_out=1.0,
    )  # fmt: skip
    summary = llmbatch.run(config)
    assert summary.stats.success_count == 4
    assert sim.stats()["by_path"] == {"responses": 4}
    for rec in read_out(out):
        meta = rec["llmbatch"]
        assert meta["service_tier"] == "flex"  # echoed by the Responses reply, priced as batch
        assert meta["cost"] == pytest.approx(priced(meta, 1.0, 1.0, 1.0) / 2, rel=1e-9)
    with pytest.raises(llmbatch.ConfigError, match="endpoint"):
        llmbatch.run(config.replace(template=None, rows=None, requests=[], endpoint="responses"))


def test_cli_on_ray_runs_responses_lines(start_sim, tmp_path: Path) -> None:
    pytest.importorskip("ray")
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_lines(inp, [responses_line(f"r{i}", f"question {i}") for i in range(10)])
    done = cli(
        *run_args(sim, inp, out, "--ray", "--ray-address", "local", "--workers", "2"),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert sim.stats()["by_path"] == {"responses": 10}
    for rec in read_out(out):
        assert rec["error"] is None and rec["response"]["body"]["object"] == "response"
        assert rec["llmbatch"]["usage"]["completion_tokens"] > 0
