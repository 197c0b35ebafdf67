"""Structured output: schemas sent natively, replies validated, re-asked, refused, truncated.

Against the simulator in its own process. Its structured faults are drawn from a hash of the
request body (not from arrival order), so which requests fail is the same on every run.
"""

from __future__ import annotations

import json
import pickle
import random
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from pydantic import BaseModel, Field

from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
from llmbatch.clients.anthropic import AnthropicClient
from llmbatch.clients.openai import OpenAIClient
from llmbatch.errors import InvalidOutputError, RefusalError, TruncatedReplyError
from llmbatch.replies import ReplyPolicy, ReplyTries
from llmbatch.retry import RetryPolicy
from llmbatch.schema import Schema, SchemaError, SchemaRefCycle, SchemaViolation
from llmbatch.simulate.structured import _instance
from llmbatch.types import CompletionResponse

from .helpers import cli, read_out, run_args

LABEL = {
    "title": "label",
    "type": "object",
    "properties": {
        "label": {"enum": ["positive", "negative", "neutral"]},
        "score": {"type": "number", "minimum": 0, "maximum": 1},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 4},
        "source": {
            "type": "object",
            "properties": {"page": {"type": "integer", "minimum": 1}, "kind": {"const": "web"}},
            "required": ["page", "kind"],
            "additionalProperties": False,
        },
    },
    "required": ["label", "score", "tags", "source"],
    "additionalProperties": False,
}


class Line(BaseModel):
    sku: str
    qty: int = Field(ge=1)


class Invoice(BaseModel):
    vendor: str
    lines: list[Line]
    currency: str = "EUR"


def write_inputs(path: Path, n: int, **extra: Any) -> list[str]:
    ids = [f"r{i}" for i in range(n)]
    path.write_text(
        "".join(json.dumps({"id": i, "prompt": f"review {i}", **extra}) + "\n" for i in ids)
    )
    return ids


def write_schema(tmp_path: Path, schema: dict[str, Any] = LABEL) -> Path:
    path = tmp_path / "label.schema.json"
    path.write_text(json.dumps(schema))
    return path


def content_of(record: dict[str, Any]) -> str:
    return str(record["response"]["body"]["choices"][0]["message"]["content"])


# -- the CLI ------------------------------------------------------------------------------------


def test_a_schema_run_writes_only_replies_that_validate(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    ids = write_inputs(inp, 20)
    proc = cli(*run_args(sim, inp, out, "--schema", str(write_schema(tmp_path))))
    assert proc.returncode == 0, proc.stderr
    records = read_out(out)
    assert sorted(r["custom_id"] for r in records) == sorted(ids)
    for r in records:
        parsed = r["llmbatch"]["parsed"]
        jsonschema.validate(parsed, LABEL)
        assert json.loads(content_of(r)) == parsed
        assert r["llmbatch"]["attempts"] == 1
    stats = sim.stats()
    assert stats["structured"] == 20 and stats["invalid"] == 0


def test_invalid_replies_are_re_asked_with_the_error_then_accepted(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--invalid-rate", "0.5")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inp, 30)
    schema = write_schema(tmp_path)
    proc = cli(*run_args(sim, inp, out, "--schema", str(schema), "--max-invalid-retries", "10"))
    assert proc.returncode == 0, proc.stderr
    records = read_out(out)
    assert len(records) == 30 and all(r["error"] is None for r in records)
    for r in records:
        jsonschema.validate(r["llmbatch"]["parsed"], LABEL)
    attempts = [r["llmbatch"]["attempts"] for r in records]
    stats = sim.stats()
    # Every broken reply cost exactly one more request, and some requests needed several.
    assert stats["invalid"] > 0
    assert sum(attempts) == stats["received"] == 30 + stats["invalid"]
    assert max(attempts) >= 2


def test_the_re_ask_carries_the_reply_and_the_validator_message() -> None:
    schema = Schema.from_dict(LABEL)
    bad = '{"label": "positive", "score": 0.5, "tags": ["a", "b"]}'
    with pytest.raises(SchemaViolation) as info:
        schema.validate(bad)
    error = InvalidOutputError(str(info.value), response=CompletionResponse(bad))
    request = CompletionRequest(prompt="review 1", system="be brief", schema=schema)
    follow = ReplyPolicy(max_invalid_retries=1).follow_up(request, error, tries := ReplyTries())
    assert follow is not None and follow.prompt == "" and follow.system == "be brief"
    assert [m["role"] for m in follow.messages or ()] == ["user", "assistant", "user"]
    assert follow.messages[1]["content"] == bad  # type: ignore[index]
    assert "'source' is a required property" in follow.messages[2]["content"]  # type: ignore[index]
    assert ReplyPolicy(max_invalid_retries=1).follow_up(follow, error, tries) is None


def test_exhausted_re_asks_fail_as_invalid_output_keeping_the_reply(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--invalid-rate", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inp, 5)
    schema = write_schema(tmp_path)
    prices = ("--price-in", "1", "--price-out", "2")
    proc = cli(
        *run_args(sim, inp, out, "--schema", str(schema), "--max-invalid-retries", "1", *prices)
    )
    assert proc.returncode == 1, proc.stderr
    records = read_out(out)
    assert len(records) == 5
    stats = sim.stats()
    billed = (stats["prompt_tokens"] * 1 + stats["completion_tokens"] * 2) / 1e6
    # Both replies (the ask and the re-ask) were paid for: the failed line carries their cost
    # (resume counts it), and the lines together what the server billed.
    assert sum(r["llmbatch"]["cost"] for r in records) == pytest.approx(billed)
    for r in records:
        usage = r["response"]["body"]["usage"]
        last = (usage["prompt_tokens"] * 1 + usage["completion_tokens"] * 2) / 1e6
        assert r["llmbatch"]["cost"] > last
        assert r["error"]["code"] == "invalid_output"
        assert "does not match the schema" in r["error"]["message"]
        assert r["llmbatch"]["attempts"] == 2  # the first ask and one re-ask
        raw = json.loads(content_of(r))  # the raw reply is in the line, and it is JSON
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(raw, LABEL)
        assert r["response"]["request_id"].startswith("req_")
    assert sim.stats()["received"] == 10
    # --retry-failed tries them again (and the fault is in every reply, so again they fail).
    again = cli(*run_args(sim, inp, out, "--schema", str(schema), "--retry-failed"))
    assert again.returncode == 1
    assert sim.stats()["received"] == 10 + 5 * 3


def test_refusals_fail_as_refused_without_retries(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--refusal-rate", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inp, 4)
    proc = cli(*run_args(sim, inp, out, "--schema", str(write_schema(tmp_path))))
    assert proc.returncode == 1
    for r in read_out(out):
        assert r["error"]["code"] == "refused" and r["llmbatch"]["attempts"] == 1
        assert r["response"]["body"]["choices"][0]["message"]["refusal"]
    assert sim.stats()["received"] == 4


def test_truncated_json_is_not_retried_unchanged(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    # The llama.cpp case: JSON mode, replies cut by max_tokens. Each fails once, as
    # truncated, keeping the partial body and its finish_reason.
    sim = start_sim("--truncate-rate", "1")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inp, 6, response_format="json", max_tokens=8)
    proc = cli(*run_args(sim, inp, out))
    assert proc.returncode == 1
    for r in read_out(out):
        assert r["error"]["code"] == "truncated" and r["llmbatch"]["attempts"] == 1
        choice = r["response"]["body"]["choices"][0]
        assert choice["finish_reason"] == "length" and choice["message"]["content"]
    assert sim.stats()["received"] == 6


def test_a_truncated_schema_reply_gets_one_retry_with_more_room(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    out, out2 = tmp_path / "out.jsonl", tmp_path / "out2.jsonl"
    rows = tmp_path / "rows.csv"
    rows.write_text("id,text\n" + "".join(f"t{i},text number {i}\n" for i in range(4)))
    template = ["--template", "Label: {text}", "--rows", str(rows), "--max-tokens", "5"]
    schema = str(write_schema(tmp_path))
    base = ["run", "-o", str(out), "--base-url", sim.url + "/v1", "--model", "m", "--no-progress"]
    proc = cli(*base, *template, "--schema", schema)
    assert proc.returncode == 1
    assert {r["error"]["code"] for r in read_out(out)} == {"truncated"}
    assert sim.stats()["received"] == 4
    base[2] = str(out2)
    proc = cli(*base, *template, "--schema", schema, "--max-tokens-on-truncation", "400")
    assert proc.returncode == 0, proc.stderr
    for r in read_out(out2):
        assert r["error"] is None and r["llmbatch"]["attempts"] == 2
        jsonschema.validate(r["llmbatch"]["parsed"], LABEL)


def test_prompt_mode_sends_json_mode_and_the_schema_in_the_system_prompt(
    tmp_path: Path, start_sim
) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inp, 5)
    schema = str(write_schema(tmp_path))
    proc = cli(*run_args(sim, inp, out, "--schema", schema, "--schema-mode", "prompt"))
    assert proc.returncode == 0, proc.stderr
    for r in read_out(out):
        jsonschema.validate(r["llmbatch"]["parsed"], LABEL)
    body = OpenAIClient(api_key="-").body_for(
        CompletionRequest(prompt="x", schema=Schema.from_dict(LABEL, mode="prompt"))
    )
    assert body["response_format"] == {"type": "json_object"}
    assert '"additionalProperties":false' in body["messages"][0]["content"]


def test_flag_errors_are_clear_and_nothing_is_sent(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inp, 2)
    proc = cli(*run_args(sim, inp, out, "--json"))
    assert proc.returncode == 2 and "--json applies to --template requests" in proc.stderr
    broken = tmp_path / "broken.json"
    broken.write_text('{"type": "object", "properties": {"a": {"type": "strng"}}}')
    proc = cli(*run_args(sim, inp, out, "--schema", str(broken)))
    assert proc.returncode == 2
    assert f"schema file {broken}" in proc.stderr and "properties/a/type" in proc.stderr
    (tmp_path / "nojson.json").write_text("{nope")
    proc = cli(*run_args(sim, inp, out, "--schema", str(tmp_path / "nojson.json")))
    assert proc.returncode == 2 and "is not valid JSON" in proc.stderr
    emb = tmp_path / "emb.jsonl"
    emb.write_text(
        json.dumps(
            {"custom_id": "e", "url": "/v1/embeddings", "body": {"model": "e", "input": "x"}}
        )
        + "\n"
    )
    proc = cli(*run_args(sim, emb, out, "--schema", str(write_schema(tmp_path))))
    assert (
        proc.returncode == 2
        and "line 1: --schema applies to chat and responses requests" in proc.stderr
    )
    assert sim.stats()["received"] == 0


def test_a_schema_ref_that_does_not_resolve_is_refused_before_sending(  # type: ignore[no-untyped-def]
    tmp_path: Path, start_sim
) -> None:
    # Nothing is ever downloaded: a remote or dangling $ref used to fail every reply with
    # "unknown" after each request had been sent and paid for.
    sim = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_inputs(inp, 2)
    for ref in ("http://127.0.0.1:9/remote.json", "#/$defs/nope"):
        schema = tmp_path / "ref.json"
        schema.write_text(json.dumps({"type": "object", "properties": {"a": {"$ref": ref}}}))
        proc = cli(*run_args(sim, inp, out, "--schema", str(schema)))
        assert proc.returncode == 2, proc.stderr
        assert f"$ref {ref!r} at /properties/a does not resolve" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert sim.stats()["received"] == 0 and not out.exists()
    # References inside the schema (by pointer, by a nested $id; refs in data are data) pass.
    good = {
        "$id": "https://example.com/root",
        "type": "object",
        "properties": {"a": {"$ref": "#/$defs/x"}, "b": {"$ref": "item"}},
        "$defs": {"x": {"type": "string"}, "i": {"$id": "item", "type": "integer"}},
        "examples": [{"$ref": "not-a-reference"}],
    }
    assert Schema.from_dict(good).validate('{"a": "s", "b": 1}') == {"a": "s", "b": 1}
    with pytest.raises(SchemaViolation):
        Schema.from_dict(good).validate('{"a": "s", "b": "x"}')


# -- the library --------------------------------------------------------------------------------


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_pydantic_model_round_trip(provider: str, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--invalid-rate", "0.3")
    if provider == "openai":
        client: Any = OpenAIClient(base_url=sim.url + "/v1", api_key="-", model="m")
    else:
        client = AnthropicClient(base_url=sim.url, api_key="-", model="m")
    processor = BatchProcessor(
        client,
        BatchProcessorConfig(
            response_model=Invoice,
            replies=ReplyPolicy(max_invalid_retries=8),
            retry=RetryPolicy(base_delay=0.0),
        ),
    )
    requests = [BatchRequest(f"i{i}", CompletionRequest(prompt=f"invoice {i}")) for i in range(12)]
    results = processor.process_batch(requests)
    assert [r.id for r in results] == [f"i{i}" for i in range(12)]
    for r in results:
        assert r.error is None, r.error
        assert isinstance(r.parsed, Invoice) and all(isinstance(x, Line) for x in r.parsed.lines)
        assert r.parsed == Invoice.model_validate_json(r.response.content)  # type: ignore[union-attr]
    assert sim.stats()["invalid"] > 0
    assert sim.stats()["received"] == sum(r.attempts for r in results)


def test_anthropic_gets_a_forced_tool_and_refusals_and_truncation_by_stop_reason(start_sim) -> None:  # type: ignore[no-untyped-def]
    client = AnthropicClient(api_key="-", model="m")
    body = client.body_for(CompletionRequest(prompt="x", schema=Invoice))
    assert body["tool_choice"] == {"type": "tool", "name": "Invoice"}
    assert body["tools"][0]["name"] == "Invoice"
    assert body["tools"][0]["input_schema"] == Invoice.model_json_schema()
    sim = start_sim("--refusal-rate", "0.5", "--truncate-rate", "0.5")
    client = AnthropicClient(base_url=sim.url, api_key="-", model="m")
    processor = BatchProcessor(client, BatchProcessorConfig(response_model=Invoice))
    requests = [BatchRequest(f"i{i}", CompletionRequest(prompt=f"invoice {i}")) for i in range(16)]
    results = processor.process_batch(requests)
    kinds = {type(r.error) for r in results}
    assert RefusalError in kinds and TruncatedReplyError in kinds
    for r in results:
        if isinstance(r.error, TruncatedReplyError):
            assert r.error.response is not None
            assert r.error.response.finish_reason == "max_tokens" and r.attempts == 1
        if isinstance(r.error, RefusalError):
            assert r.error.body["stop_reason"] == "refusal"  # type: ignore[index]
    stats = sim.stats()
    assert stats["refused"] + stats["truncated"] == sum(r.error is not None for r in results)


def test_openai_strict_only_when_the_schema_qualifies() -> None:
    client = OpenAIClient(api_key="-")
    body = client.body_for(CompletionRequest(prompt="x", schema=Schema.from_dict(LABEL)))
    spec = body["response_format"]["json_schema"]
    assert body["response_format"]["type"] == "json_schema"
    assert spec["name"] == "label" and spec["strict"] is True and spec["schema"] == LABEL
    # pydantic leaves defaulted fields optional and extra keys allowed: not strict-ready.
    body = client.body_for(CompletionRequest(prompt="x", schema=Invoice))
    assert body["response_format"]["json_schema"]["strict"] is False


def test_schemas_pickle_for_ray_workers_and_validate_there() -> None:
    for schema in (Schema.from_dict(LABEL), Schema.from_model(Invoice)):
        schema.validate(
            json.dumps(_instance(schema.json_schema, schema.json_schema, random.Random(1), 0))
        )
        copy = pickle.loads(pickle.dumps(schema))
        assert copy.json_schema == schema.json_schema and copy.model is schema.model
        with pytest.raises(ValueError, match="does not match the schema"):
            copy.validate('{"label": "nope"}')


def test_a_native_schema_must_be_an_object_at_its_root() -> None:
    with pytest.raises(SchemaError, match='"type": "object"'):
        Schema.from_dict({"type": "array", "items": {"type": "string"}})
    Schema.from_dict({"type": "array", "items": {"type": "string"}}, mode="prompt")


def test_the_simulator_fits_every_keyword_it_claims() -> None:
    schema = {
        "type": "object",
        "$defs": {
            "Tag": {"type": "object", "properties": {"k": {"type": "string", "minLength": 3}}}
        },
        "properties": {
            "kind": {"const": "x"},
            "n": {"type": "integer", "minimum": 5, "maximum": 7},
            "r": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "boolean"}]},
            "tags": {"type": "array", "items": {"$ref": "#/$defs/Tag"}, "minItems": 3},
            "day": {"type": "string", "format": "date"},
            "deep": {"type": "object", "properties": {"e": {"enum": [1, 2]}}, "required": ["e"]},
        },
        "required": ["kind", "n", "r", "maybe", "tags", "day", "deep"],
    }
    for seed in range(50):
        value = _instance(schema, schema, random.Random(seed), 0)
        jsonschema.validate(value, schema)


# -- simulator fidelity, through the official SDK -----------------------------------------------


def test_sdk_embeddings_of_a_list_get_one_vector_each_and_stream_is_refused(start_sim) -> None:  # type: ignore[no-untyped-def]
    openai = pytest.importorskip("openai")
    sim = start_sim()
    sdk = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)
    got = sdk.embeddings.create(model="e", input=["a", "b", "c"])
    assert [d.index for d in got.data] == [0, 1, 2]
    assert got.data[0].embedding != got.data[1].embedding
    single = sdk.embeddings.create(model="e", input="a")
    assert len(single.data) == 1
    with pytest.raises(openai.BadRequestError, match="stream"):
        sdk.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
    parsed = sdk.chat.completions.parse(
        model="m", messages=[{"role": "user", "content": "an invoice"}], response_format=Strict
    )
    assert isinstance(parsed.choices[0].message.parsed, Strict)


class Strict(BaseModel):
    model_config = {"extra": "forbid"}
    vendor: str
    total: float


def test_a_batch_line_json_schema_is_that_lines_schema(tmp_path: Path, start_sim) -> None:  # type: ignore[no-untyped-def]
    sim = start_sim("--invalid-rate", "0.4")
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"

    def line(i: int, schema: Any) -> str:
        body = {
            "model": "m",
            "messages": [{"role": "user", "content": f"review {i}"}],
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "label", "schema": schema, "strict": True},
            },
        }
        return json.dumps(
            {"custom_id": f"b{i}", "method": "POST", "url": "/v1/chat/completions", "body": body}
        )

    inp.write_text("".join(line(i, LABEL) + "\n" for i in range(10)))
    proc = cli(*run_args(sim, inp, out, "--max-invalid-retries", "10"))
    assert proc.returncode == 0, proc.stderr
    for r in read_out(out):
        jsonschema.validate(r["llmbatch"]["parsed"], LABEL)
    assert sim.stats()["invalid"] > 0
    broken = tmp_path / "broken.jsonl"
    broken.write_text(line(0, LABEL) + "\n" + line(1, {"type": "object", "required": "x"}) + "\n")
    proc = cli(*run_args(sim, broken, tmp_path / "o2.jsonl"))
    assert proc.returncode == 2
    assert (
        "line 2: body.response_format.json_schema.schema is not a valid JSON Schema" in proc.stderr
    )


def test_the_schema_counts_in_the_token_estimate() -> None:
    plain = CompletionRequest(prompt="classify this")
    shaped = CompletionRequest(prompt="classify this", schema=Schema.from_dict(LABEL))
    assert shaped.text_length() == plain.text_length() + len(
        json.dumps(LABEL, separators=(",", ":"))
    )


# -- a schema whose `$ref`s loop is refused when loaded; checking a reply never crashes ------
# A loop such as `a: {$ref: b}`, `b: {$ref: a}` passed every check, then each reply (already
# paid for) failed with a RecursionError; a reply nested deeper than the stack did too.

LOOP: dict[str, Any] = {
    "type": "object",
    "properties": {"x": {"$ref": "#/$defs/a"}},
    "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}},
}


def test_a_ref_loop_in_the_schema_file_is_refused_before_sending(  # type: ignore[no-untyped-def]
    tmp_path: Path, start_sim
) -> None:
    sim = start_sim()
    inp, out, schema = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "loop.json"
    write_inputs(inp, 3)
    schema.write_text(json.dumps(LOOP))
    proc = cli(*run_args(sim, inp, out, "--schema", str(schema)))
    assert proc.returncode == 2, proc.stderr
    assert "#/$defs/a -> #/$defs/b -> #/$defs/a" in proc.stderr
    assert "at /properties/x" in proc.stderr and "Traceback" not in proc.stderr
    assert sim.stats()["received"] == 0 and not out.exists()


@pytest.mark.parametrize(
    ("schema", "refs", "at"),
    [
        ({"type": "object", "$ref": "#"}, ("#", "#"), ""),
        (
            {
                "type": "object",
                "anyOf": [{"not": {"$ref": "#/$defs/n"}}],
                "$defs": {"n": {"$ref": "#"}},
            },
            ("#", "#/$defs/n", "#"),
            "",
        ),
        (LOOP, ("#/$defs/a", "#/$defs/b", "#/$defs/a"), "/properties/x"),
    ],
)
def test_the_loop_is_named_in_the_errors_fields(
    schema: dict[str, Any], refs: tuple[str, ...], at: str
) -> None:
    with pytest.raises(SchemaRefCycle) as caught:
        Schema.from_dict(schema)
    assert caught.value.refs == refs and caught.value.at == at
    assert isinstance(caught.value, SchemaError)


def test_recursion_through_the_value_is_a_valid_schema() -> None:
    # A tree: each $ref steps into a part of the reply, so checking it ends.
    tree = Schema.from_dict(
        {
            "type": "object",
            "properties": {
                "children": {"type": "array", "items": {"$ref": "#"}},
                "next": {"$ref": "#/$defs/node"},
            },
            "$defs": {"node": {"type": "object", "properties": {"next": {"$ref": "#/$defs/node"}}}},
        }
    )
    reply = {"children": [{"children": []}], "next": {"next": {"next": {}}}}
    assert tree.validate(json.dumps(reply)) == reply
    with pytest.raises(SchemaViolation):
        tree.validate('{"children": [{"children": 1}]}')


def test_a_reply_nested_too_deeply_is_a_violation_not_a_crash() -> None:
    tree = Schema.from_dict(
        {"type": "object", "properties": {"c": {"$ref": "#"}}, "additionalProperties": False}
    )
    deep = '{"c":' * 1000 + "{}" + "}" * 1000  # within orjson's depth limit, past Python's stack
    with pytest.raises(SchemaViolation, match="nested too deeply"):
        tree.validate(deep)
