"""Export never drops a value because two fields flatten to one column.

`{"a.b": 1, "a": {"b": 2}}` became one column `a.b` holding 2: the 1 was gone without a word.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from llmbatch import BatchResult, CompletionResponse
from llmbatch.io.export import ColumnClash, OutputIndex, flatten
from llmbatch.io.journal import result_line

from .helpers import cli


def line(rid: str, parsed: Any) -> bytes:
    return result_line(
        BatchResult(rid, response=CompletionResponse("{}"), attempts=1, parsed=parsed)
    )


@pytest.mark.parametrize("target", ["t.csv", "t.jsonl"])
def test_a_dotted_key_and_a_nested_key_on_one_column_stop_the_export(
    tmp_path: Path, target: str
) -> None:
    out, table = tmp_path / "out.jsonl", tmp_path / target
    out.write_bytes(
        line("r1", {"a.b": 1, "c": {"d": 1}})
        + line("r2", {"a.b": 1, "a": {"b": 2}})
        + line("r3", {"a": {"b": 3}})
    )
    proc = cli("export", str(out), "-o", str(table))
    assert proc.returncode == 2, proc.stderr
    assert "the parsed reply of 'r2' has two fields that both flatten to column 'a.b'" in (
        proc.stderr
    )
    assert not table.exists()
    with pytest.raises(ColumnClash) as caught:
        OutputIndex.build(out)
    assert (caught.value.column, caught.value.custom_id) == ("a.b", "r2")


def test_the_clash_is_found_in_either_order_and_deep_down() -> None:
    for value in ({"a": {"b": {"c": 2}}, "a.b.c": 1}, {"x": {"a.b": 1, "a": {"b": 2}}}):
        with pytest.raises(ColumnClash):
            flatten(value, "", {})
    # Fields that do not meet flatten as before.
    assert flatten({"a.b": 1, "a": {"c": 2}, "e": {}}, "out_", {}) == {
        "out_a.b": 1,
        "out_a.c": 2,
        "out_e": {},
    }
