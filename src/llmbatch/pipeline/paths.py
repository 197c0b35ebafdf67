"""The paths a run touches, checked before the output is opened or anything is sent.

    check_paths(config)      # ConfigError naming the field, for a path unusable or taken

One rule for every path: no path may be another's. The output, its lock, compaction and
batch-ledger files, the stats file, the cache, the error log directory and the report are
each written; none of them may be an input (`input`, `rows`, `schema`) or one another, or a
rerun would find its journal replaced by a stats file or turned into SQLite.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..batch_api import ledger_paths
from ..io.atomic import os_reason
from ..io.tables import DUCKDB_PREFIX
from .config import RunConfig
from .errors import ConfigError

__all__ = ["check_paths", "make_error_log_dir", "output_files", "path_roles"]


def output_files(output: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """(what, path) for each file a run keeps beside its output: the one list that the path
    checks, the `files` glob (which must not read them back) and `llmbatch report -o` use."""
    out = Path(output)
    ledger, chunks = ledger_paths(out)
    return [
        ("the output's lock file", out.with_name(out.name + ".lock")),
        ("the output's compaction file", out.with_name(out.name + ".compact.tmp")),
        ("the output's index", out.with_name(out.name + ".idx")),
        ("the output's index copy", out.with_name(out.name + ".idx.tmp")),
        ("the batch ledger", ledger),
        ("the batch ledger's directory", chunks),
    ]


def path_roles(config: RunConfig) -> list[tuple[str, str, Path]]:
    """(field, what, path) for every path the run reads or writes, the output's own files
    included (their field is "output")."""
    roles: list[tuple[str, str, Path]] = []
    for name in ("input", "rows"):
        value = getattr(config, name)
        if isinstance(value, str) and value.startswith(DUCKDB_PREFIX):
            continue  # a query over files, not a path
        if isinstance(value, str | os.PathLike) and value:  # not a table from Python
            roles.append((name, f"`{name}`", Path(value)))
    if isinstance(config.schema, str | os.PathLike):
        roles.append(("schema", "`schema`", Path(config.schema)))
    roles.append(("output", "`output`", Path(config.output)))
    roles += [("output", what, path) for what, path in output_files(config.output)]
    for name in ("stats_json", "cache", "error_log", "report"):
        value = getattr(config, name)
        if value:
            roles.append(
                (
                    name,
                    f"the `{name}` {'directory' if name == 'error_log' else 'file'}",
                    Path(value),
                )
            )
    return roles


_WRITTEN = ("output", "stats_json", "cache", "error_log", "report")


def check_paths(config: RunConfig) -> None:
    """Refuse unusable or clashing paths, one message each, before anything is opened."""
    roles = path_roles(config)
    real = [(name, what, _real(path)) for name, what, path in roles]
    for i, (name, what, path) in enumerate(real):
        for other_name, other_what, other in real[i + 1 :]:
            if name == other_name == "output":
                continue
            if path == other and (name in _WRITTEN or other_name in _WRITTEN):
                # Name the written one: it is the one that would destroy the other.
                culprit, victim = (
                    (other_name, what) if other_name in _WRITTEN else (name, other_what)
                )
                if name == "output" and other_name in ("input", "rows"):
                    culprit, victim = "output", other_what
                read = victim in ("`input`", "`rows`", "`schema`")
                why = ": results would overwrite the input" if read else ""
                raise ConfigError(culprit, f"{_shown(config, culprit)} is {victim}{why}")
    _, chunks = ledger_paths(config.output)
    inside = _real(chunks)
    for name, _, path in real:
        if name != "output" and path.parent == inside:
            raise ConfigError(
                name, f"{_shown(config, name)} is inside the batch ledger's directory"
            )
    output = Path(config.output)
    if output.is_dir():
        raise ConfigError("output", f"`output` {output} is a directory")
    if not output.parent.is_dir():
        raise ConfigError("output", f"`output` {output}: directory {output.parent} does not exist")
    if output.exists() and output.stat().st_size and not config.resume:
        raise ConfigError(
            "resume", f"{output} exists and resume is off: remove it, or turn `resume` on"
        )
    if config.error_log:
        log_dir = Path(config.error_log)
        if log_dir.exists() and not log_dir.is_dir():
            raise ConfigError("error_log", f"`error_log` {log_dir} is a file; it needs a directory")
    for name in ("stats_json", "report"):
        value = getattr(config, name)
        if value:
            path = Path(value)
            if path.is_dir():
                raise ConfigError(name, f"`{name}` {path} is a directory")
            if not path.resolve().parent.is_dir():
                raise ConfigError(name, f"`{name}` {path}: directory {path.parent} does not exist")


def _shown(config: RunConfig, name: str) -> str:
    return f"`{name}` {getattr(config, name)}"


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def make_error_log_dir(config: RunConfig) -> None:
    """Create `config.error_log`'s directory (once the run holds its output: see `arun`)."""
    if not config.error_log:
        return
    log_dir = Path(config.error_log)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            "error_log", f"`error_log` {log_dir} is a file; it needs a directory"
        ) from None
    except OSError as exc:
        raise ConfigError("error_log", f"`error_log` {log_dir}: {os_reason(exc)}") from None
