"""The response cache never crashes a batch, and a bad cache path is one clear error."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from llmbatch import BatchProcessor, BatchProcessorConfig, BatchRequest, CompletionRequest
from llmbatch.clients import AnthropicClient, FakeClient
from llmbatch.io.cache import CacheError, SQLiteCache, request_key
from llmbatch.types import CompletionResponse


def _key(req: CompletionRequest) -> str:
    return request_key("fake", "http://x", req.model, [req.prompt, req.endpoint])


def reqs(n: int, **kw: object) -> list[BatchRequest]:
    return [BatchRequest(f"r{i}", CompletionRequest(prompt=f"q{i}", **kw)) for i in range(n)]  # type: ignore[arg-type]


async def test_answers_come_back_from_the_cache(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db", _key)
    client = FakeClient()
    first = await BatchProcessor(client, BatchProcessorConfig(cache=cache)).aprocess_batch(reqs(5))
    again = await BatchProcessor(client, BatchProcessorConfig(cache=cache)).aprocess_batch(reqs(5))
    cache.close()
    assert all(r.ok for r in first + again) and len(client.calls) == 5
    assert all(r.response.cached for r in again)  # type: ignore[union-attr]


async def test_a_full_disk_turns_caching_off_and_loses_no_answer(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = SQLiteCache(tmp_path / "c.db", _key, commit_interval=0.0)
    # SQLite's own page cap: writes past it fail with SQLITE_FULL, as on a full disk.
    page_count = cache._db.execute("PRAGMA page_count").fetchone()[0]
    cache._db.execute(f"PRAGMA max_page_count={page_count}")
    long = [BatchRequest(f"r{i}", CompletionRequest(prompt="x" * 5000 + str(i))) for i in range(40)]
    with caplog.at_level(logging.WARNING, logger="llmbatch.cache"):
        results = await BatchProcessor(
            FakeClient(), BatchProcessorConfig(cache=cache)
        ).aprocess_batch(long)
        cache.close()
    assert all(r.ok and r.response and r.response.content for r in results)
    assert not cache.writable and cache.errors >= 1
    assert len([r for r in caplog.records if "write failed" in r.getMessage()]) == 1


async def test_an_anthropic_cache_with_an_embeddings_line_skips_that_line(tmp_path: Path) -> None:
    anthropic = AnthropicClient(api_key="k", model="m")

    def key(req: CompletionRequest) -> str:  # as the CLI builds it: from the provider's body
        return request_key("anthropic", anthropic.base_url, req.model, anthropic.body_for(req))

    cache = SQLiteCache(tmp_path / "c.db", key)
    batch = [*reqs(3), BatchRequest("emb", CompletionRequest(prompt="v", endpoint="embeddings"))]
    results = await BatchProcessor(FakeClient(), BatchProcessorConfig(cache=cache)).aprocess_batch(
        batch
    )
    cache.close()
    assert all(r.ok for r in results) and cache.errors == 2  # its get and its put
    assert len(SQLiteCache(tmp_path / "c.db", key)) == 3


def test_an_unserialisable_response_is_skipped(tmp_path: Path) -> None:
    cache = SQLiteCache(tmp_path / "c.db", _key)
    req = CompletionRequest(prompt="q", endpoint="embeddings")
    cache.put(req, CompletionResponse("", raw={"data": [{"embedding": {1.5, 2.5}}]}))  # a set
    cache.put(req, CompletionResponse("", raw={"n": 2**70}))  # beyond 64 bits
    assert cache.errors == 2 and cache.writable and len(cache) == 0
    cache.put(req, CompletionResponse("", raw={"data": [{"embedding": [0.1, 0.2]}]}))
    hit = cache.get(req)
    cache.close()
    assert hit is not None and hit.raw["data"][0]["embedding"] == [0.1, 0.2]


def test_a_cache_corrupted_while_open_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    cache = SQLiteCache(path, _key, commit_interval=0.0)
    cache.put(CompletionRequest(prompt="a"), CompletionResponse("A"))
    other = sqlite3.connect(path)
    other.execute("DROP TABLE responses")  # the file changes under us
    other.close()
    assert cache.get(CompletionRequest(prompt="a")) is None
    cache.put(CompletionRequest(prompt="b"), CompletionResponse("B"))
    cache.close()
    assert cache.errors == 2 and not cache.writable


def test_a_directory_or_a_garbage_file_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CacheError, match="is a directory"):
        SQLiteCache(tmp_path, _key)
    garbage = tmp_path / "notes.txt"
    garbage.write_bytes(b"this is not sqlite at all\n" * 200)
    with pytest.raises(CacheError, match=r"notes.txt: not a SQLite database"):
        SQLiteCache(garbage, _key)
    assert garbage.read_bytes().startswith(b"this is not sqlite")  # untouched
    with pytest.raises(CacheError, match="does not exist"):
        SQLiteCache(tmp_path / "missing" / "c.db", _key)
    foreign = tmp_path / "foreign.db"
    db = sqlite3.connect(foreign)
    db.execute("CREATE TABLE responses (a, b)")
    db.close()
    with pytest.raises(CacheError, match="not an llmbatch cache"):
        SQLiteCache(foreign, _key)


def test_credentials_in_the_base_url_are_not_part_of_the_key() -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    plain = request_key("openai", "https://host.example/v1", "m", body)
    assert request_key("openai", "https://user:old@host.example/v1", "m", body) == plain
    assert request_key("openai", "https://user:new@host.example/v1", "m", body) == plain
    # The endpoint itself still decides the key.
    assert request_key("openai", "https://other.example/v1", "m", body) != plain
    assert request_key("openai", "https://host.example/v2", "m", body) != plain
