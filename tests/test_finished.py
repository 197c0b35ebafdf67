"""`llmbatch.io.finished.IdTable`: exact membership in ~23 bytes per id."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from llmbatch.io.finished import IdTable


def test_the_newest_line_of_an_id_wins() -> None:
    table = IdTable()
    assert table.add("a", 1, ok=False) is None
    assert table.add("b", 2) is None
    assert table.add("a", 3, ok=True) == 1  # the line it replaces
    assert table.status("a") is True and table.line("a") == 3
    assert table.status("c") is None and "c" not in table and "a" in table
    assert (len(table), table.repeats, table.counts()) == (2, 1, (2, 0))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.text(min_size=1, max_size=12), min_size=1, max_size=300),
    st.lists(st.text(min_size=1, max_size=12), max_size=50),
    st.sampled_from([hash, lambda s: 1, lambda s: len(s)]),
)
def test_membership_is_exact_whatever_the_hash(ids: list[str], others: list[str], h) -> None:  # type: ignore[no-untyped-def]
    """Grown from empty (several doublings), with a hash that collides for every id or many:
    every id added is found with its newest line and status, no other id is."""
    table = IdTable(hash=h)
    newest: dict[str, tuple[int, bool]] = {}
    for n, rid in enumerate(ids, 1):
        table.add(rid, n, ok=n % 3 != 0)
        newest[rid] = (n, n % 3 != 0)
    for rid, (line, ok) in newest.items():
        assert (table.line(rid), table.status(rid)) == (line, ok)
    for rid in others:
        if rid not in newest:
            assert table.status(rid) is None
    assert len(table) == len(newest)


def test_a_million_ids_take_under_40_bytes_each() -> None:
    table = IdTable(1_000_000)
    for i in range(1_000_000):
        table.add(f"req-{i}", i + 1)
    assert table.nbytes() / 1_000_000 < 40
    assert table.status("req-999999") is True and table.status("req-1000000") is None
