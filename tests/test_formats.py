"""Input line parsing: both shapes, pass-through of unknown body fields, precise errors."""

from __future__ import annotations

import codecs
import csv
import io
from pathlib import Path
from typing import Any

import orjson

from llmbatch.clients import OpenAIClient
from llmbatch.io.formats import BadLine, InputItem, parse_line, read_rows
from llmbatch.types import CompletionRequest


def parse(obj: object) -> InputItem | BadLine | None:
    return parse_line(orjson.dumps(obj), 4)


def test_batch_line_keeps_unknown_body_fields_for_the_provider() -> None:
    item = parse(
        {
            "custom_id": "x",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt",
                "messages": [{"role": "user", "content": "hi"}],
                "response_format": {"type": "json_object"},
                "logit_bias": {"50256": -100},
                "max_tokens": 5,
            },
        }
    )
    assert isinstance(item, InputItem) and item.id == "x"
    body = OpenAIClient(api_key="k").body_for(item.request)
    assert body == {
        "model": "gpt",
        "messages": [{"role": "user", "content": "hi"}],
        "response_format": {"type": "json_object"},
        "max_tokens": 5,
        "logit_bias": {"50256": -100},
    }


def test_embeddings_with_a_list_input_passes_the_list_through() -> None:
    item = parse({"custom_id": "e", "url": "/v1/embeddings", "body": {"input": ["a", "b"]}})
    assert isinstance(item, InputItem)
    assert OpenAIClient(api_key="k").body_for(item.request)["input"] == ["a", "b"]


def test_errors_name_the_line_and_the_field() -> None:
    cases = [
        ({"custom_id": "", "url": "/v1/chat/completions", "body": {}}, "custom_id must be"),
        ({"custom_id": "a", "url": "/v1/chat/completions", "body": {}}, "body.messages"),
        ({"custom_id": "a", "method": "GET", "url": "/v1/embeddings", "body": {}}, "method"),
        ({"id": "a", "prompt": "x", "max_tokens": -1}, "max_tokens must be a positive"),
        ({"id": "a", "prompt": "x", "response_format": "xml"}, "response_format 'xml'"),
        ({"id": True, "prompt": "x"}, "id must be"),
        ([1, 2], "expected a JSON object"),
        ({"foo": 1}, "no id or custom_id"),
    ]
    for obj, message in cases:
        bad = parse(obj)
        assert isinstance(bad, BadLine), obj
        assert str(bad).startswith("line 4: ") and message in str(bad), (obj, str(bad))


def test_blank_lines_are_skipped() -> None:
    assert parse_line(b"   \n", 1) is None


# --- --rows: every row accounted for, with its true number ---

BASE = CompletionRequest(max_tokens=10)


def _rows(path: Path, template: str = "T: {title}", **kw: Any) -> list[InputItem | BadLine]:
    return list(read_rows(template, path, "id", BASE, **kw))


def _write_csv(path: Path, rows: list[list[str]], *, bom: bool = False) -> Path:
    buf = io.StringIO()
    csv.writer(buf).writerows([["id", "title", "abstract"], *rows])
    path.write_bytes((codecs.BOM_UTF8 if bom else b"") + buf.getvalue().encode())
    return path


def test_a_huge_csv_field_costs_one_row_and_keeps_its_number(tmp_path: Path) -> None:
    # Every 10th row has a quoted multi-line field, so rows and lines differ.
    rows = [
        [f"id{i}", f"title {i}", "line one\nline two" if i % 10 == 0 else "a"]
        for i in range(1, 1001)
    ]
    rows[49][1] = "x" * 200_000  # row 50
    path = _write_csv(tmp_path / "in.csv", rows)
    items = _rows(path, max_field_chars=100_000)
    good = [i for i in items if isinstance(i, InputItem)]
    bad = [i for i in items if isinstance(i, BadLine)]
    assert len(good) == 999 and [b.line for b in bad] == [50]
    assert "200000 characters" in str(bad[0]) and str(bad[0]).startswith("row 50: ")
    assert [i.line for i in good][-1] == 1000 and good[-1].id == "id1000"
    # Under the default limit a 200,000-character field is an ordinary row (the csv
    # module's own limit is 131,072).
    assert sum(isinstance(i, InputItem) for i in _rows(path)) == 1000


def test_a_bad_byte_costs_one_row_reported_with_its_true_number(tmp_path: Path) -> None:
    rows = [[f"id{i}", f"title {i}", "two\nlines" if i % 7 == 0 else "a"] for i in range(1, 1001)]
    path = _write_csv(tmp_path / "in.csv", rows)
    data = path.read_bytes().replace(b"title 900,", b"title \xff900,")
    path.write_bytes(data)
    items = _rows(path)
    bad = [i for i in items if isinstance(i, BadLine)]
    assert [str(b).split(":")[0] for b in bad] == ["row 900"]
    assert "'title' is not valid UTF-8" in str(bad[0])
    assert sum(isinstance(i, InputItem) for i in items) == 999


def test_a_csv_with_a_utf8_bom_reads_its_id_column(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / "bom.csv", [["a", "Hello", "x"], ["b", "World", "y"]], bom=True)
    items = _rows(path)
    assert [(i.id, i.request.prompt) for i in items] == [("a", "T: Hello"), ("b", "T: World")]  # type: ignore[union-attr]
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_bytes(codecs.BOM_UTF8 + b'{"id": "a", "title": "Hi"}\n')
    assert [i.id for i in _rows(jsonl)] == ["a"]  # type: ignore[union-attr]


def test_a_utf16_or_utf32_csv_with_a_mark_is_read_as_export_reads_it(tmp_path: Path) -> None:
    # Spreadsheets save "Unicode text" as UTF-16 with a byte-order mark.
    text = 'id,title\r\na,"Café\r\nau lait"\r\nb,日本\r\n'
    for encoding in ("utf-16", "utf-16-be", "utf-32"):
        path = tmp_path / f"{encoding}.csv"
        data = text.encode(encoding)
        if encoding == "utf-16-be":
            data = codecs.BOM_UTF16_BE + data
        path.write_bytes(data)
        items = _rows(path)
        assert [(i.id, i.request.prompt) for i in items] == [  # type: ignore[union-attr]
            ("a", "T: Café\r\nau lait"),
            ("b", "T: 日本"),
        ], encoding
    # A file cut inside a code unit: the rows before it are read, the last is reported.
    cut = tmp_path / "cut.csv"
    cut.write_bytes(text.encode("utf-16") + b"\x00")
    items = _rows(cut)
    assert [i.id for i in items if isinstance(i, InputItem)] == ["a", "b"]
    assert [str(i) for i in items if isinstance(i, BadLine)] == [
        "row 3: field 'id' is not valid UTF-16 (line 5)"
    ]


def test_a_missing_or_empty_template_field_is_a_bad_row_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,title,abstract\na,T1,A1\nb,T2,\nc,T3\n")
    items = _rows(path, "T: {title} A: {abstract}")
    assert str(items[0]) != "" and isinstance(items[0], InputItem)
    assert [str(i) for i in items[1:]] == [
        "row 2: template field {abstract} is empty",
        "row 3: template field {abstract} is missing",
    ]
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_text('{"id": "a", "title": "T", "abstract": null}\n{"id": "b", "title": "T"}\n')
    assert [str(i) for i in _rows(jsonl, "{title} {abstract}")] == [
        "row 1: template field {abstract} is missing",
        "row 2: template field {abstract} is missing",
    ]


def test_missing_empty_fills_absent_fields_with_nothing(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,title,abstract\nb,T2,\nc,T3\n")
    items = _rows(path, "T: {title} A: {abstract}", missing="empty")
    assert [i.request.prompt for i in items] == ["T: T2 A: ", "T: T3 A: "]  # type: ignore[union-attr]
    assert all("None" not in i.request.prompt for i in items)  # type: ignore[union-attr]
