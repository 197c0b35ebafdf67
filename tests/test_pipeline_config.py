"""`RunConfig`: one field per `llmbatch run` flag, values checked when it is made."""

from __future__ import annotations

import dataclasses
import time
from datetime import timedelta
from pathlib import Path

import pytest

from llmbatch import ConfigError, RunConfig
from llmbatch.cli import build_parser
from llmbatch.cli.flags import config_from, flag_name


def run_flags() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    run = sub.choices["run"]  # type: ignore[attr-defined]
    return {a.dest for a in run._actions if a.dest != "help"}


def test_every_run_flag_is_a_field_of_the_same_name() -> None:
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert run_flags() <= fields, run_flags() - fields
    # What only Python can pass is all that is left over.
    assert fields - run_flags() == {"requests", "client", "listeners"}


def test_the_flags_defaults_are_the_configs() -> None:
    args = build_parser().parse_args(["run", "in.jsonl", "-o", "out.jsonl"])
    assert config_from(args) == RunConfig(input="in.jsonl", output="out.jsonl")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"rpm": -1.0}, "rpm"),
        ({"rpm": float("nan")}, "rpm"),
        ({"concurrency": 0}, "concurrency"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_cost": float("inf")}, "max_cost"),
        ({"expired": "later"}, "expired"),
        ({"schema_mode": "loose"}, "schema_mode"),
        ({"metrics_port": 70000}, "metrics_port"),
        ({"finish_by": "tomorrow-ish"}, "finish_by"),
        ({"workers": True}, "workers"),
    ],
)
def test_a_bad_value_names_its_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        RunConfig(output="out.jsonl", **changes)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(field)
    assert caught.value.render(flag_name).startswith("--" + field.replace("_", "-"))


def test_finish_by_takes_text_durations_and_dates_and_implies_the_batch_api() -> None:
    before = time.time()
    config = RunConfig(output="o.jsonl", finish_by=timedelta(hours=1))
    assert config.batch_api
    assert config.deadline is not None and before + 3599 < config.deadline < time.time() + 3601
    text = RunConfig(output="o.jsonl", finish_by="90m")
    assert text.deadline is not None and text.deadline - before == pytest.approx(5400, abs=5)


def test_a_template_error_names_the_field_for_python_and_the_flag_for_the_cli(
    tmp_path: Path,
) -> None:
    import llmbatch

    (tmp_path / "a.txt").write_text("hello")
    config = RunConfig(
        files=str(tmp_path / "*.txt"),
        template="no field at all",
        output=str(tmp_path / "out.jsonl"),
        base_url="http://127.0.0.1:9",  # never reached: the template is refused first
        model="m",
    )
    with pytest.raises(ConfigError) as caught:
        llmbatch.run(config)
    assert caught.value.field == "template"
    assert str(caught.value) == "template has no {field}: every request would be the same"
    assert caught.value.render(flag_name).startswith("--template has no {field}")
