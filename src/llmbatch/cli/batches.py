"""`llmbatch batches list|cancel OUTPUT`: the provider batches a --batch-api run recorded.

    llmbatch batches list results.jsonl            # each chunk: state, batch id, live status
    llmbatch batches cancel results.jsonl          # cancel every batch still running

Both read OUTPUT.batches.json (the ledger) and never write it: the run that owns OUTPUT
keeps it. After a cancel, rerunning the run's command collects what the batches finished
and writes the rest as batch_cancelled lines (`--retry-failed` submits them again).
"""

from __future__ import annotations

import argparse
import asyncio
from dataclasses import asdict

import orjson
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..batch_api import BatchInfo, Ledger, LedgerError, backend_for
from ..clients import ClientConfigError, ClientSpec, ProviderClient
from ..errors import LLMBatchError
from ..pipeline.errors import name_fields
from ..redact import MASK, public_url
from ._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, say
from .flags import flag_name

__all__ = ["add_parser", "main"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "batches",
        help="list or cancel the provider batches of a --batch-api run",
        description="Show or cancel the provider batches recorded next to OUTPUT by "
        "`llmbatch run --batch-api` (OUTPUT.batches.json). The key is read from the "
        "provider's environment variable (or --api-key-env).",
    )
    p.add_argument("action", choices=("list", "cancel"))
    p.add_argument("output", metavar="OUTPUT", help="the run's results file")
    p.add_argument("--api-key-env", metavar="NAME", help="environment variable holding the key")
    p.add_argument(
        "--base-url",
        metavar="URL",
        help="the run's --base-url, needed when it held credentials (user:password@): the "
        "ledger records it without them",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per chunk")
    p.add_argument(
        "--offline",
        action="store_true",
        help="list: show the ledger only, without asking the provider for live status",
    )


def main(args: argparse.Namespace) -> int:
    out = Console(soft_wrap=True)
    # Piped: wide enough that batch ids are never folded (scripts read them).
    console = out if out.is_terminal else Console(soft_wrap=True, width=200)
    errors = Console(stderr=True, soft_wrap=True)
    try:
        ledger = Ledger.read(args.output)
        base_url = _base_url(args, ledger)
        client = ClientSpec(
            provider=ledger.provider, base_url=base_url, api_key_env=args.api_key_env
        ).build()
    except (LedgerError, ClientConfigError) as exc:
        say(errors, f"llmbatch batches: error: {name_fields(str(exc), flag_name)}")
        return EXIT_USAGE
    return asyncio.run(_main(args, ledger, client, console, errors))


def _base_url(args: argparse.Namespace, ledger: Ledger) -> str:
    """The URL to reach the ledger's batches: the ledger's, or --base-url with the
    credentials the ledger leaves out (it must be the same URL otherwise)."""
    if args.base_url is None:
        if f"{MASK}@" in ledger.base_url:
            raise LedgerError(
                f"the run used {ledger.base_url}, whose credentials are not recorded: pass "
                "its URL with --base-url"
            )
        return ledger.base_url
    if public_url(args.base_url) != ledger.base_url:
        raise LedgerError(
            f"--base-url {public_url(args.base_url)} is not the run's {ledger.base_url}"
        )
    return str(args.base_url)


async def _main(
    args: argparse.Namespace,
    ledger: Ledger,
    client: ProviderClient,
    console: Console,
    errors: Console,
) -> int:
    backend = backend_for(client)
    live: dict[int, BatchInfo | str] = {}
    failed = False
    cancelled = 0
    try:
        for record in ledger.chunks:
            if not record.live or record.batch_id is None:
                continue
            if args.action == "list" and args.offline:
                continue
            try:
                now = await backend.get(record.batch_id)
                if args.action == "cancel" and not now.ended:  # an ended one has nothing to stop
                    now = await backend.cancel(record.batch_id)
                    cancelled += 1
                live[record.n] = now
            except LLMBatchError as exc:
                live[record.n] = f"error: {exc}"
                failed = True
    finally:
        await client.aclose()
    if args.json:
        for record in ledger.chunks:
            info = live.get(record.n)
            row = asdict(record) | {"ids_file": str(ledger.ids_path(record.n))}
            if isinstance(info, BatchInfo):
                row |= {"status": info.status, "succeeded": info.succeeded, "failed": info.failed}
            elif isinstance(info, str):
                row["error"] = info
            print(orjson.dumps(row).decode())
        return EXIT_FAILED if failed else EXIT_OK
    table = Table(title=f"{ledger.provider} batches of {args.output} ({ledger.base_url})")
    for column in ("chunk", "requests", "state", "batch", "status", "done", "failed"):
        table.add_column(
            column,
            justify="right" if column in ("requests", "done") else "left",
            no_wrap=column == "batch",
            overflow="fold",
        )
    for record in ledger.chunks:
        info = live.get(record.n)
        status, done, bad = record.status or "", "", ""
        if isinstance(info, BatchInfo):
            status, done, bad = info.status, f"{info.succeeded:,}", f"{info.failed:,}"
        elif isinstance(info, str):
            status = info
        table.add_row(
            str(record.n),
            f"{record.count:,}",
            record.state,
            record.batch_id or "-",
            Text(status),
            done,
            bad,
        )
    console.print(table)
    pending = [r.n for r in ledger.chunks if r.live and r.batch_id is None]
    if pending:
        say(
            errors,
            f"chunk(s) {', '.join(map(str, pending))}: a run stopped while creating their "
            "batch; rerun the run's command to find or create it",
        )
    if args.action == "cancel":
        say(
            errors,
            f"cancel requested for {cancelled} batch(es); rerun the run's command to collect what "
            "they finished (the rest become batch_cancelled lines)",
        )
    return EXIT_FAILED if failed else EXIT_OK
