"""The first pass of `llmbatch run`: every line checked and the work counted before sending."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from llmbatch.io.formats import BadLine, InputItem, read_jsonl
from llmbatch.pipeline import RunConfig
from llmbatch.pipeline.precheck import MAX_BAD_LINES_SHOWN, precheck
from llmbatch.types import CompletionRequest


def args(**kw: Any) -> RunConfig:
    return RunConfig(output="out.jsonl", **kw)


def jsonl(tmp_path: Path, rows: list[object]) -> Path:
    path = tmp_path / "in.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def never(_: str) -> bool:
    return False


def test_counts_the_work_and_leaves_done_ids_out(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"id": f"r{i}", "prompt": "x"} for i in range(6)])
    check = precheck(lambda: read_jsonl(path), lambda rid: rid in {"r1", "r4"}, args())
    assert (check.items, check.runnable, check.skipped_done, check.bad_count) == (6, 4, 2, 0)


def test_a_duplicate_is_confirmed_and_named_with_its_first_line(tmp_path: Path) -> None:
    path = jsonl(
        tmp_path,
        [{"id": "a", "prompt": "x"}, {"id": "b", "prompt": "y"}, {"id": "a", "prompt": "z"}],
    )
    check = precheck(lambda: read_jsonl(path), never, args())
    assert check.runnable == 2 and check.bad_lines == {3}
    assert [str(b) for b in check.bad] == ["line 3: duplicate id 'a' (first on line 1)"]


def test_a_done_id_repeated_in_the_input_is_not_a_duplicate(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}])
    check = precheck(lambda: read_jsonl(path), lambda rid: rid == "a", args())
    assert check.bad_count == 0 and check.skipped_done == 2 and check.runnable == 0


class _SameHash(str):
    """Two different ids with one hash: what the hash set cannot tell apart."""

    def __hash__(self) -> int:
        return 42


def test_two_ids_sharing_a_hash_are_not_duplicates() -> None:
    def source() -> Iterator[InputItem | BadLine]:
        yield InputItem(1, _SameHash("a"), CompletionRequest(prompt="x"))
        yield InputItem(2, _SameHash("b"), CompletionRequest(prompt="y"))

    check = precheck(source, never, args())
    assert check.runnable == 2 and check.bad_count == 0


def test_bad_lines_are_all_counted_and_the_first_few_kept(tmp_path: Path) -> None:
    rows: list[object] = ["not json"] * (MAX_BAD_LINES_SHOWN + 5) + [{"id": "ok", "prompt": "x"}]
    path = jsonl(tmp_path, rows)
    check = precheck(lambda: read_jsonl(path), never, args())
    assert check.bad_count == MAX_BAD_LINES_SHOWN + 5 and len(check.bad) == MAX_BAD_LINES_SHOWN
    assert check.bad_lines == set(range(1, MAX_BAD_LINES_SHOWN + 6)) and check.runnable == 1


def test_prompts_over_the_token_limits_are_bad_lines(tmp_path: Path) -> None:
    path = jsonl(tmp_path, [{"id": "small", "prompt": "w"}, {"id": "big", "prompt": "w " * 400}])
    check = precheck(lambda: read_jsonl(path), never, args(max_input_tokens=100))
    assert check.runnable == 1 and "line 2: prompt is ~200 tokens" in str(check.bad[0])
    check = precheck(lambda: read_jsonl(path), never, args(tpm=150.0))
    assert check.runnable == 1 and "more than `tpm` 150 allows" in str(check.bad[0])
