"""`llmbatch export --join` finds the id column the run used (`--id-field doi` at run time)
from the data: the export is not told again."""

from __future__ import annotations

import csv
from pathlib import Path

from llmbatch.io.export import guess_id_field

from .helpers import cli, ids_once


def test_export_join_uses_the_runs_id_field_without_being_told(start_sim, tmp_path: Path) -> None:
    sim = start_sim("--latency-ms", "5")
    papers, out, table = tmp_path / "papers.csv", tmp_path / "out.jsonl", tmp_path / "t.csv"
    # An "id" column that is not the run's ids, beside the "doi" the run used.
    rows = [{"id": str(i), "doi": f"10.1/{i:03d}", "title": f"T{i}"} for i in range(30)]
    with papers.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["id", "doi", "title"])
        writer.writeheader()
        writer.writerows(rows)
    run = cli(
        "run", "--template", "Classify: {title}", "--rows", str(papers), "--id-field", "doi",
        "-o", str(out), "--base-url", sim.url + "/v1", "--model", "m", "--no-progress",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert set(ids_once(out)) == {r["doi"] for r in rows}
    assert guess_id_field(papers, out) == "doi"
    done = cli("export", str(out), "-o", str(table), "--join", str(papers))
    assert done.returncode == 0, done.stderr
    with table.open(newline="") as f:
        exported = list(csv.DictReader(f))
    assert [r["doi"] for r in exported] == [r["doi"] for r in rows]
    assert all(r["out_status"] == "ok" and r["out_reply"] for r in exported), exported[0]


def test_no_matching_column_falls_back_to_id(tmp_path: Path) -> None:
    rows, out = tmp_path / "r.jsonl", tmp_path / "out.jsonl"
    rows.write_text('{"key": "a"}\n')
    out.write_text('{"custom_id": "zzz", "response": null, "error": null}\n')
    assert guess_id_field(rows, out) is None
