"""The first pass over a run's input: validate every line and count the work.

    check = precheck(source, skip, config)   # check.runnable, check.bad, check.bad_count

Nothing is sent until this pass is over, so bad input (malformed lines, missing or duplicate
ids, prompts over the token budget) stops a run before it costs anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ..io.finished import IdTable
from ..io.formats import BadLine, InputItem, TemplateError
from ..limiter import Estimate
from ..text import chars_to_tokens
from ..types import CompletionRequest
from .config import RunConfig
from .errors import ConfigError

__all__ = ["MAX_BAD_LINES_SHOWN", "Precheck", "check_input", "precheck"]

MAX_BAD_LINES_SHOWN = 10


@dataclass(slots=True)
class Precheck:
    """What the first pass over the input found."""

    items: int = 0
    runnable: int = 0
    skipped_done: int = 0
    bad: list[BadLine] = field(default_factory=list)
    bad_count: int = 0
    bad_lines: set[int] = field(default_factory=set)


def precheck(
    source: Callable[[], Iterator[InputItem | BadLine]],
    skip: Callable[[str], bool],
    config: RunConfig,
    observe: Callable[[CompletionRequest], None] | None = None,
    *,
    id_hash: Callable[[str], int] = hash,
) -> Precheck:
    """Check every line; `observe` is called with each runnable request (`llmbatch plan`
    counts its tokens there, so the input is read once). `id_hash`: the id table's hash
    (tests inject one that collides)."""
    check = Precheck()
    # Without per-minute limits no request can be over a budget: skip the estimate (a third
    # of this pass's time on a million short lines).
    over_a_budget = _limit_check(config)
    # Duplicates are found by a compact table of the ids (`IdTable`, ~23 bytes each, where a
    # set of str takes ~10x that) that keeps each id's first line; a suspect is confirmed by
    # comparing the ids themselves in a second look, only when some are suspected. Ids
    # already done are left out: they are never sent twice whatever the input says.
    seen = IdTable(hash=id_hash)
    suspects: dict[int, int] = {}  # line -> the line its id was first seen on

    def bad(entry: BadLine) -> None:
        check.bad_count += 1
        check.bad_lines.add(entry.line)
        if len(check.bad) < MAX_BAD_LINES_SHOWN:
            check.bad.append(entry)

    for item in source():
        check.items += 1
        if isinstance(item, BadLine):
            bad(item)
            continue
        if skip(item.id):
            check.skipped_done += 1
            continue
        first = seen.add(item.id, item.line)
        if first is not None:
            seen.add(item.id, first)  # the first line stays the one to name
            suspects[item.line] = first
            continue
        _count(item, check, config, bad, over_a_budget, observe)
    del seen  # before the second look: the table is the largest thing held
    if suspects:
        _confirm_duplicates(source, suspects, check, bad, config, over_a_budget, observe)
    return check


def check_input(
    source: Callable[[], Iterator[InputItem | BadLine]],
    skip: Callable[[str], bool],
    config: RunConfig,
    where: str,
    observe: Callable[[CompletionRequest], None] | None = None,
) -> Precheck:
    """`precheck`, with what stops a run or a plan as a `ConfigError`: a template that
    cannot be used, an input that cannot be read or holds no requests. (Bad lines are in
    the result: a run refuses them, a plan lists them.)"""
    try:
        check = precheck(source, skip, config, observe)
    except TemplateError as exc:
        raise ConfigError("template", str(exc)) from None
    except OSError as exc:
        raise ConfigError("input", f"cannot read {where}: {exc}") from None
    if check.items == 0:
        raise ConfigError("input", f"{where} holds no requests")
    return check


def _confirm_duplicates(
    source: Callable[[], Iterator[InputItem | BadLine]],
    suspects: dict[int, int],
    check: Precheck,
    bad: Callable[[BadLine], None],
    config: RunConfig,
    over_a_budget: Callable[[Estimate], str | None] | None,
    observe: Callable[[CompletionRequest], None] | None = None,
) -> None:
    """Compare the ids of the suspect lines with those of the lines they were taken for:
    equal, a duplicate; not (two ids with one fingerprint), checked as any other line."""
    firsts = set(suspects.values())
    ids: dict[int, str] = {}  # line -> id, for the first lines (few: one per duplicated id)
    later: list[InputItem] = []
    for item in source():
        if isinstance(item, InputItem):
            if item.line in firsts:
                ids[item.line] = item.id
            elif item.line in suspects:
                later.append(item)
    for item in later:
        first = suspects[item.line]
        if ids.get(first) == item.id:
            bad(BadLine(item.line, f"duplicate id {item.id!r} (first on line {first})"))
            continue
        _count(item, check, config, bad, over_a_budget, observe)


def _count(
    item: InputItem,
    check: Precheck,
    config: RunConfig,
    bad: Callable[[BadLine], None],
    over_a_budget: Callable[[Estimate], str | None] | None,
    observe: Callable[[CompletionRequest], None] | None,
) -> None:
    """A line with a new id: counted as runnable, or bad if over a limit it can never fit."""
    req = item.request
    if config.max_input_tokens:
        prompt_tokens = chars_to_tokens(req.text_length())
        if prompt_tokens > config.max_input_tokens:
            bad(BadLine(item.line, _over_input(prompt_tokens, config.max_input_tokens)))
            return
    if over_a_budget is not None and (too_big := over_a_budget(Estimate.of(req))):
        bad(BadLine(item.line, too_big))
        return
    check.runnable += 1
    if observe is not None:
        observe(req)


def _over_input(prompt_tokens: int, limit: int) -> str:
    return f"prompt is ~{prompt_tokens} tokens, over `max_input_tokens` {limit}"


def _limit_check(config: RunConfig) -> Callable[[Estimate], str | None] | None:
    """The test "why could this request never be sent under the per-minute limits (or
    None)", or None when no limit is given. The limits are read once, not per line."""
    checks = [
        (part, limit, what, flag)
        for part, name, what, flag in (
            ("total", "tpm", "tokens", "`tpm`"),
            ("input", "itpm", "input tokens", "`itpm`"),
            ("output", "otpm", "output tokens", "`otpm`"),
        )
        if (limit := getattr(config, name, None))
    ]
    if not checks:
        return None

    def over(est: Estimate) -> str | None:
        for part, limit, what, flag in checks:
            need = getattr(est, part)
            if need > limit:
                return (
                    f"needs ~{need} {what}, more than {flag} {limit:.0f} allows in a minute: "
                    "it could never be sent"
                )
        return None

    return over
