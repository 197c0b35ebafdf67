"""The durable record of a run's provider batches, next to its output file.

    ledger = Ledger.open("out.jsonl", provider="openai", base_url=url)
    record = ledger.add(chunk, now)              # intent: written BEFORE anything is sent
    record.file_id = "file-abc"; ledger.save()   # after the upload
    record.batch_id = "batch_abc"; ledger.save() # after the create

`OUTPUT.batches.json` holds one record per chunk: its number, key, how many ids it covers
and their digest, the input file id, the batch id, and its state (intent, uploaded, created,
ended). The ids themselves are in `OUTPUT.batches.d/chunk-N.ids` (one JSON string a line), so
the ledger stays a few kilobytes for a million-line run; the digest proves the ids file is
the one the record was made with.

Every save is atomic: a temp file is written and fsync'ed, renamed over the ledger, and the
directory fsync'ed, so after a crash or `kill -9` the ledger is the old one or the new one,
never a mix. Because the intent is saved before the upload and the batch id right after the
create, a rerun knows of every batch that may exist (`runner` finds the one whose create
answer was lost). The output's lock (`Journal`) keeps a second run from writing it.
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..io.atomic import write_atomic
from ..redact import public_url
from .split import Chunk, ids_digest, read_ids

__all__ = ["ChunkRecord", "Ledger", "LedgerError", "ledger_paths"]

VERSION = 1

INTENT, UPLOADED, CREATED, ENDED = "intent", "uploaded", "created", "ended"


class LedgerError(Exception):
    """The ledger cannot be used: unreadable, from another provider or URL, or its ids file
    does not match it. `str()` is the one-line message."""


@dataclass(slots=True)
class ChunkRecord:
    """What is known of one chunk's batch. `state` only moves forward, but for a batch the
    provider failed for its enqueued-token limit: its chunk goes back to uploaded (or intent)
    to be created again, `extra["refused"]` naming the refused batches."""

    n: int
    key: str
    count: int
    digest: str
    intent_at: float
    state: str = INTENT
    file_id: str | None = None
    batch_id: str | None = None
    status: str | None = None  # the provider's last reported status
    ended_at: float | None = None
    note: str | None = None  # why it ended without a batch (a refused create)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def live(self) -> bool:
        return self.state != ENDED


def ledger_paths(output: str | Path) -> tuple[Path, Path]:
    """(ledger file, sidecar directory) for an output file."""
    out = Path(output)
    return out.with_name(out.name + ".batches.json"), out.with_name(out.name + ".batches.d")


class Ledger:
    """Load with `Ledger.open`; change records, then `save()`. One writer (the output's lock)."""

    def __init__(self, path: Path, directory: Path, provider: str, base_url: str) -> None:
        self.path = path
        self.directory = directory
        self.provider = provider
        self.base_url = base_url
        self.run_key = secrets.token_hex(8)
        self.chunks: list[ChunkRecord] = []

    @classmethod
    def open(cls, output: str | Path, *, provider: str, base_url: str) -> Ledger:
        """The ledger of `output` (a new, empty one if there is none). `LedgerError` if it
        records another provider or base URL: its batches could not be reached from here."""
        path, directory = ledger_paths(output)
        # Recorded without its credentials (`public_url`): the ledger is a plain file,
        # shown by `llmbatch batches`; the run that owns it has the URL itself.
        base_url = public_url(base_url)
        ledger = cls(path, directory, provider, base_url)
        if not path.exists() and any(directory.glob("chunk-*")):
            # The ledger is saved before the directory is made (`ensure_directory`), so chunk
            # files without it mean it was deleted: the batches it named may be running and
            # billed, and starting afresh would submit (and pay for) their lines again.
            raise LedgerError(
                f"{directory} holds batch chunks but {path} is missing: the batches it "
                "recorded may be running and billed. Restore it to collect them; or, to "
                "submit those lines again and pay for them again, remove the directory too"
            )
        if path.exists():
            ledger._load()
            if (ledger.provider, ledger.base_url) != (provider, base_url):
                raise LedgerError(
                    f"{path} records batches at {ledger.provider} {ledger.base_url}; this run "
                    f"uses {provider} {base_url}: use the same `provider`/`base_url`, or "
                    "another OUTPUT"
                )
        return ledger

    @classmethod
    def read(cls, output: str | Path) -> Ledger:
        """An existing ledger as it is (for `llmbatch batches`). `LedgerError` if none."""
        path, directory = ledger_paths(output)
        if not path.exists():
            raise LedgerError(f"{path} does not exist: no `batch_api` run wrote {output}")
        ledger = cls(path, directory, "", "")
        ledger._load()
        return ledger

    def _load(self) -> None:
        try:
            data = orjson.loads(self.path.read_bytes())
            if data.get("version") != VERSION:
                raise LedgerError(f"{self.path}: unknown ledger version {data.get('version')!r}")
            self.provider = str(data["provider"])
            self.base_url = public_url(str(data["base_url"]))  # an older ledger kept them
            self.run_key = str(data["run_key"])
            self.chunks = [ChunkRecord(**c) for c in data["chunks"]]
        except LedgerError:
            raise
        except (OSError, orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise LedgerError(
                f"{self.path} cannot be read ({exc}); it records provider batches that may "
                "be running: restore it, or move it away to start over (batches it names "
                "would then be submitted again)"
            ) from None

    # -- changes ----------------------------------------------------------------------------

    @property
    def next_n(self) -> int:
        return max((c.n for c in self.chunks), default=-1) + 1

    def add(self, chunk: Chunk, now: float, extra: dict[str, Any] | None = None) -> ChunkRecord:
        """Record the intent to submit `chunk`, durably, and return its record. `extra`: what
        else to keep (the runner's "worst_cost" when a budget is kept)."""
        record = ChunkRecord(chunk.n, chunk.key, chunk.count, chunk.digest, now)
        if extra:
            record.extra.update(extra)
        self.chunks.append(record)
        self.save()
        return record

    def save(self) -> None:
        """Write the ledger atomically: temp file, fsync, rename, directory fsync."""
        data = {
            "version": VERSION,
            "provider": self.provider,
            "base_url": self.base_url,
            "run_key": self.run_key,
            "chunks": [asdict(c) for c in self.chunks],
        }
        write_atomic(self.path, orjson.dumps(data, option=orjson.OPT_INDENT_2))

    # -- the sidecar files ------------------------------------------------------------------

    def ensure_directory(self) -> Path:
        if not self.path.exists():
            self.save()  # first, so a chunk file never exists without its ledger
        self.directory.mkdir(exist_ok=True)
        return self.directory

    def input_path(self, n: int) -> Path:
        return self.directory / f"chunk-{n}.input"

    def ids_path(self, n: int) -> Path:
        return self.directory / f"chunk-{n}.ids"

    def ids(self, record: ChunkRecord) -> list[str]:
        """The ids `record` covers, in submission order, checked against its digest."""
        return [rid for rid, _ in self.entries(record)]

    def entries(self, record: ChunkRecord) -> list[tuple[str, str | None]]:
        """(id, custom_id sent if not the id) of each request of `record`, checked."""
        try:
            entries = read_ids(self.ids_path(record.n))
        except (OSError, orjson.JSONDecodeError, IndexError) as exc:
            raise LedgerError(
                f"{self.ids_path(record.n)}: cannot read the ids of batch chunk {record.n} "
                f"({exc}); the ledger needs it to match results to lines"
            ) from None
        ids = [rid for rid, _ in entries]
        if len(ids) != record.count or ids_digest(ids) != record.digest:
            raise LedgerError(
                f"{self.ids_path(record.n)} does not hold the {record.count:,} ids the ledger "
                f"recorded for chunk {record.n} (changed by hand?)"
            )
        return entries

    def sweep(self) -> None:
        """Remove chunk files no live record names: a chunk held for room under the
        enqueued-token limit when its run was killed (never recorded, never sent)."""
        live = {str(c.n) for c in self.chunks if c.live}
        for path in self.directory.glob("chunk-*"):
            n = path.name.removeprefix("chunk-").split(".", 1)[0]
            if n.isdigit() and n not in live:
                path.unlink(missing_ok=True)

    def forget_files(self, record: ChunkRecord) -> None:
        """Remove an ended chunk's sidecar files (the ledger keeps its count and digest)."""
        for p in (self.input_path(record.n), self.ids_path(record.n)):
            p.unlink(missing_ok=True)
