"""Issue 27 item 10: a server that answers every request with the same 5xx is not down.

llama.cpp's server answers `response_format: json_schema` with HTTP 500 "Input should be
'text' or 'json_object'". That used to be taken for an outage: the run waited `max_outage`,
then failed every line as "unreachable", the server's message nowhere. The simulator's
`reject_json_schema` answers the same way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from llmbatch import (
    APIConnectionError,
    BatchProcessor,
    BatchProcessorConfig,
    BatchRequest,
    CompletionRequest,
    CompletionResponse,
    OutageBreaker,
    ProviderOutageError,
    RetryPolicy,
    ServerError,
)
from llmbatch.breaker import MAX_ANSWERED_PROBES
from llmbatch.clients import OpenAIClient
from llmbatch.simulate import Simulator, SimulatorConfig

from .conftest import FakeClock, SimProcess

LLAMA_CPP = "Input should be 'text' or 'json_object'"
LABEL = {
    "type": "object",
    "properties": {"label": {"type": "string"}},
    "required": ["label"],
    "additionalProperties": False,
}


def answered(message: str, status: int = 500) -> ServerError:
    body = {"error": {"message": message}}
    return ServerError(f"HTTP {status}: {message}", status_code=status, body=body)


REQUESTS = [CompletionRequest(prompt=str(key)) for key in range(50)]  # kept: keyed by id()


async def finish(breaker: OutageBreaker, error: BaseException, key: int) -> None:
    permit = breaker.admit(REQUESTS[key])
    await permit.__aenter__()
    await permit.__aexit__(type(error), error, None)


async def test_the_same_answer_to_every_request_never_opens_the_breaker(clock: FakeClock) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    for key in range(50):
        await finish(breaker, answered(LLAMA_CPP), key)
    assert not breaker.is_open


async def test_a_gateway_saying_the_server_is_gone_still_opens_it(clock: FakeClock) -> None:
    breaker = OutageBreaker(clock=clock, sleep=clock.sleep)
    for key in range(5):
        await finish(breaker, answered("no upstream", status=502), key)
    assert breaker.is_open


async def test_a_server_answering_varied_errors_is_given_up_on_soon_with_its_message(
    clock: FakeClock,
) -> None:
    breaker = OutageBreaker(max_outage=300, clock=clock, sleep=clock.sleep)
    for key in range(5):
        await finish(breaker, answered(f"worker {key} crashed"), key)
    assert breaker.is_open
    start = clock.now
    for n in range(MAX_ANSWERED_PROBES):
        probe = breaker.admit(CompletionRequest(prompt="probe"))
        await probe.__aenter__()
        error = answered(f"worker {n} crashed again")
        await probe.__aexit__(ServerError, error, None)
    with pytest.raises(ProviderOutageError) as info:
        await breaker.admit(CompletionRequest(prompt="next")).__aenter__()
    assert clock.now - start < 300  # bounded by the answers, not by max_outage
    assert "answered every attempt" in str(info.value) and "crashed again" in str(info.value)
    assert info.value.last_answer is not None


async def test_refused_connections_are_still_waited_out(clock: FakeClock) -> None:
    breaker = OutageBreaker(max_outage=300, clock=clock, sleep=clock.sleep)
    for key in range(5):
        await finish(breaker, APIConnectionError("refused"), key)
    for _ in range(3 * MAX_ANSWERED_PROBES):
        probe = breaker.admit(CompletionRequest(prompt="probe"))
        await probe.__aenter__()
        await probe.__aexit__(APIConnectionError, APIConnectionError("refused"), None)
    assert breaker.is_open and breaker.gave_up is None
    probe = breaker.admit(CompletionRequest(prompt="probe"))
    await probe.__aenter__()
    probe.record(CompletionResponse("up"))
    await probe.__aexit__(None, None, None)
    assert not breaker.is_open


async def test_a_schema_the_server_answers_500_fails_each_line_with_its_message(
    clock: FakeClock,
) -> None:
    async with Simulator(SimulatorConfig(reject_json_schema=True)) as sim:
        client = OpenAIClient(api_key="k", base_url=sim.url + "/v1", model="m")
        config = BatchProcessorConfig(
            max_concurrency=4,
            response_model=LABEL,
            retry=RetryPolicy(max_attempts=3),
            max_outage=300,
            clock=clock,
            sleep=clock.sleep,
        )
        requests = [BatchRequest(f"r{i}", CompletionRequest(prompt=f"p{i}")) for i in range(12)]
        async with client:
            results = await BatchProcessor(client, config).aprocess_batch(requests)
        received = sim.stats()["received"]
    assert len(results) == 12
    for result in results:
        assert isinstance(result.error, ServerError), result.error
        assert LLAMA_CPP in str(result.error) and 'schema_mode="prompt"' in str(result.error)
        assert result.error.setting == "schema_mode"
        assert result.attempts == 3  # its own retries, never excused as an outage
    assert received == 36
    assert clock.now - 1000.0 < 300  # not waited out as an outage


def test_cli_fails_the_lines_with_the_servers_message_and_names_schema_mode(
    tmp_path: Path, start_sim: Any
) -> None:
    sim: SimProcess = start_sim("--reject-json-schema")
    inp, out, schema = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "label.json"
    schema.write_text(json.dumps(LABEL))
    inp.write_text("".join(json.dumps({"id": f"q{i}", "prompt": f"p{i}"}) + "\n" for i in range(6)))
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    proc = subprocess.run(
        [sys.executable, "-m", "llmbatch", "run", str(inp), "-o", str(out),
         "--base-url", sim.url + "/v1", "--model", "m", "--no-progress",
         "--schema", str(schema), "--max-retries", "1", "--max-outage", "60"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 6
    for line in lines:
        assert line["error"]["code"] == "server_error"
        assert LLAMA_CPP in line["error"]["message"]
    shown = proc.stdout + proc.stderr
    assert LLAMA_CPP in shown and "--schema-mode prompt" in shown
