"""Issue 27 item 4: no secret is written, in any form a server may echo it.

The simulator plays the misbehaving server (`echo_credentials`: 401 bodies echoing the
credentials it received, minus their first N characters); the CLI runs as a subprocess.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from llmbatch import APIConnectionError, CompletionRequest, LLMBatchError
from llmbatch.clients import ClientSpec, OpenAIClient
from llmbatch.redact import Redactor
from llmbatch.simulate import Simulator, SimulatorConfig

from .conftest import SimProcess
from .helpers import cli

KEY = "gsk_0123456789abcdefGHIJklmn"  # no `sk-` shape: only masking by value can catch it
SECRET_PART = "0123456789abcdefGHIJ"


def write_input(path: Path, n: int) -> None:
    lines = (
        json.dumps({"id": f"q{i}", "prompt": f"question {i}", "max_tokens": 8}) for i in range(n)
    )
    path.write_text("\n".join(lines) + "\n")


def everything_written(tmp_path: Path, proc: subprocess.CompletedProcess[str]) -> str:
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    return "\n".join([proc.stdout, proc.stderr, *(p.read_text(errors="replace") for p in files)])


# -- (a) a key with whitespace around it, echoed stripped ---------------------------------


async def test_a_key_with_trailing_whitespace_is_sent_stripped_and_masked_in_echoes() -> None:
    async with Simulator(SimulatorConfig(echo_credentials=len("Bearer "))) as sim:
        client = OpenAIClient(api_key=KEY + " \n", base_url=sim.url + "/v1", model="m")
        async with client:
            with pytest.raises(LLMBatchError) as info:
                await client.complete(CompletionRequest(prompt="hi"))
    err = info.value
    text = f"{err} {err!r} {json.dumps(err.body)}"
    assert "invalid credentials" in text  # the echo arrived, masked
    assert SECRET_PART not in text and KEY[-12:] not in text


def test_cli_writes_no_piece_of_a_whitespace_padded_key_anywhere(
    tmp_path: Path,
    start_sim: Any,
) -> None:
    sim: SimProcess = start_sim("--echo-credentials", str(len("Bearer ")))  # the bare key
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 3)
    proc = cli(
        "run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model", "m",
        "--no-progress", "--error-log", str(tmp_path / "errors"),
        "--stats-json", str(tmp_path / "stats.json"), "--report", str(tmp_path / "report.html"),
        env={"OPENAI_API_KEY": KEY + " "},
        keys=False,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 3 and all(x["error"]["code"] == "auth" for x in lines)
    assert "invalid credentials" in out.read_text()
    assert (tmp_path / "report.html").exists()
    written = everything_written(tmp_path, proc)
    assert SECRET_PART not in written and KEY[-12:] not in written


@pytest.mark.parametrize(
    "echo",
    [
        KEY,
        base64.b64encode(KEY.encode()).decode(),
        quote("gsk_0123/456789+abcdef=GHIJ", safe=""),
        KEY[7:],  # the first characters cut off
        base64.b64encode(KEY.encode()).decode()[5:],
    ],
    ids=["whole", "base64", "url-encoded", "tail", "base64-tail"],
)
def test_the_encoded_forms_and_long_pieces_of_a_key_are_masked(echo: str) -> None:
    key = "gsk_0123/456789+abcdef=GHIJ" if "%" in echo else KEY
    masked = Redactor([key])(f"the server said: {echo}!")
    assert masked == "the server said: ***!"


def test_short_pieces_of_a_key_and_ordinary_text_are_left_alone() -> None:
    redactor = Redactor([KEY])
    text = "gsk_0123 is a prefix, 456789abcde too; ordinary text"
    assert redactor(text) == text


# -- (b) credentials in the base URL --------------------------------------------------------


def test_base_url_credentials_are_never_in_the_ledger_or_batches_list(
    tmp_path: Path, start_sim: Any
) -> None:
    sim: SimProcess = start_sim("--batch-seconds", "0.2")
    password = "Hunter2-pa55word"
    url = sim.url.replace("http://", f"http://alice:{password}@") + "/v1"
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 4)
    run = cli("run", str(inp), "-o", str(out), "--base-url", url, "--model", "m",
              "--no-progress", "--batch-api", keys=False)  # fmt: skip
    assert run.returncode == 0, run.stderr
    listed = cli("batches", "list", str(out), "--base-url", url, keys=False)
    assert listed.returncode == 0, listed.stderr
    assert "completed" in listed.stdout
    written = everything_written(tmp_path, run) + listed.stdout + listed.stderr
    assert password not in written and "alice:" not in written
    ledger = json.loads(out.with_name(out.name + ".batches.json").read_text())
    assert ledger["base_url"] == sim.url.replace("http://", "http://***@") + "/v1"
    # Without the URL, `batches` says what it needs instead of failing at the provider.
    bare = cli("batches", "list", str(out), keys=False)
    assert bare.returncode == 2 and "--base-url" in bare.stderr and password not in bare.stderr


async def test_a_base_url_is_shown_without_its_user_and_password() -> None:
    url = "http://alice:Hunter2-pa55word@127.0.0.1:9/v1"  # port 9: refused at once
    assert "alice" not in repr(ClientSpec(base_url=url))
    client = OpenAIClient(api_key="", base_url=url, model="m")
    async with client:
        with pytest.raises(APIConnectionError) as info:
            await client.complete(CompletionRequest(prompt="hi"))
    shown = f"{info.value} {client!r} {client.http!r}"
    assert "127.0.0.1:9" in shown and "alice" not in shown and "Hunter2" not in shown


def test_a_key_and_base_url_credentials_together_are_a_usage_error(
    tmp_path: Path, start_sim: Any
) -> None:
    sim: SimProcess = start_sim()
    url = sim.url.replace("http://", "http://alice:Hunter2-pa55word@") + "/v1"
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 2)
    proc = cli("run", str(inp), "-o", str(out), "--base-url", url, "--model", "m",
               "--no-progress", env={"OPENAI_API_KEY": KEY}, keys=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "--base-url" in proc.stderr and "Traceback" not in proc.stderr
    assert "Hunter2" not in proc.stderr + proc.stdout
    assert sim.stats()["received"] == 0


# -- (c) Basic credentials echoed in part ----------------------------------------------------


@pytest.mark.parametrize("cut", [0, 6, 9, 14])
async def test_basic_credentials_echoed_in_part_are_masked(cut: int) -> None:
    password = "Hunter2-pa55word"
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    async with Simulator(SimulatorConfig(echo_credentials=cut)) as sim:
        url = sim.url.replace("http://", f"http://alice:{password}@") + "/v1"
        async with OpenAIClient(api_key="", base_url=url, model="m") as client:
            with pytest.raises(LLMBatchError) as info:
                await client.complete(CompletionRequest(prompt="hi"))
    text = f"{info.value} {json.dumps(info.value.body)}"
    assert "invalid credentials" in text
    assert basic[cut:][:12] not in text and basic[-12:] not in text and password not in text


async def test_basic_credentials_of_an_extra_header_echoed_in_part_are_masked() -> None:
    basic = base64.b64encode(b"bob:correct-horse-battery").decode()
    async with Simulator(SimulatorConfig(echo_credentials=10)) as sim:
        headers = {"Authorization": f"Basic {basic}"}
        async with OpenAIClient(
            api_key="", base_url=sim.url + "/v1", model="m", extra_headers=headers
        ) as client:
            with pytest.raises(LLMBatchError) as info:
                await client.complete(CompletionRequest(prompt="hi"))
    text = f"{info.value} {json.dumps(info.value.body)}"
    assert "invalid credentials" in text and basic[-12:] not in text


# -- (d) a key holding a control character ---------------------------------------------------


def test_a_key_with_a_newline_inside_is_refused_before_sending() -> None:
    from llmbatch.clients import ClientConfigError

    with pytest.raises(ClientConfigError) as info:
        OpenAIClient(api_key="gsk_0123456789\nabcdef", model="m")
    assert info.value.field == "api_key" and "\n" not in str(info.value)
    assert "0123456789" not in str(info.value)


def test_cli_names_the_variable_holding_a_key_with_a_newline(
    tmp_path: Path, start_sim: Any
) -> None:
    sim: SimProcess = start_sim()
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    write_input(inp, 2)
    proc = cli("run", str(inp), "-o", str(out), "--base-url", sim.url + "/v1", "--model", "m",
               "--no-progress", "--api-key-env", "MY_KEY",
               env={"MY_KEY": "gsk_0123456789\nabcdef"}, keys=False)  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "MY_KEY" in proc.stderr and "control character" in proc.stderr
    assert "Traceback" not in proc.stderr and "0123456789" not in proc.stderr
    assert sim.stats()["received"] == 0
