"""The local FTS5 index answers from documents a test adds; SearXNG through a stand-in."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kimiserve.media.fetch import AddressPolicy, SafeFetcher
from kimiserve.tools import ToolFailed
from kimiserve.tools.search import LocalIndex, SearchHit, SearxngBackend
from tests.media.stub import Stub
from tests.tools.searxng_standin import standin

pytestmark = pytest.mark.timeout(20)

OTTERS = """# Sea otters

Sea otters hold hands while they sleep, so that they do not drift apart. A group of
resting otters is called a raft.

They eat sea urchins, crabs and clams, and use stones as tools to open shells.
"""
KIMI = "Kimi K2.6 is a mixture-of-experts language model by Moonshot AI with a 256K context window.\n"


@pytest.fixture
def index(tmp_path: Path) -> LocalIndex:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "otters.md").write_text(OTTERS)
    (docs / "kimi.txt").write_text(KIMI)
    (docs / "image.png").write_bytes(b"\x89PNG")
    idx = LocalIndex(tmp_path / "data" / "search.db")
    added = idx.add_path(docs)
    assert sorted(d.title for d in added) == ["Sea otters", "kimi.txt"]  # the .png is skipped
    return idx


async def test_local_index_answers_a_question_from_added_documents(index: LocalIndex) -> None:
    hits = await index.search("What is a group of resting otters called?", 3)
    assert hits[0].title == "Sea otters"
    assert hits[0].url.startswith("file://") and hits[0].url.endswith("/docs/otters.md")
    assert "raft" in hits[0].snippet


async def test_local_index_ranks_the_matching_document_first(index: LocalIndex) -> None:
    hits = await index.search("Moonshot context window", 3)
    assert [h.title for h in hits] == ["kimi.txt"]


async def test_fts_syntax_in_a_query_is_plain_text(index: LocalIndex) -> None:
    for query in ['otters" OR "x', "NEAR(otters", "otters AND", "*", '"', "title:otters"]:
        await index.search(query, 3)  # never an FTS5 syntax error
    assert await index.search("?!", 3) == []


async def test_re_adding_a_document_replaces_it_and_a_url_can_be_given(
    index: LocalIndex, tmp_path: Path
) -> None:
    page = tmp_path / "page.md"
    page.write_text("# Tides\n\nThe moon pulls the tides.")
    index.add_path(page, url="https://example.org/tides")
    page.write_text("# Tides\n\nThe sun pulls the tides a little too.")
    index.add_path(page, url="https://example.org/tides")
    hits = await index.search("tides", 5)
    assert hits == [
        SearchHit("Tides", "https://example.org/tides", "# Tides The sun pulls the tides a little too.")
    ]
    assert len(index.documents()) == 3


async def test_an_empty_or_missing_index_finds_nothing(tmp_path: Path) -> None:
    assert await LocalIndex(tmp_path / "none.db").search("otters", 3) == []
    assert LocalIndex(tmp_path / "none.db").documents() == []


async def test_long_documents_are_chunked(tmp_path: Path) -> None:
    idx = LocalIndex(tmp_path / "s.db")
    text = "\n\n".join(f"Paragraph {i} about topic{i}. " + "filler " * 60 for i in range(40))
    (doc,) = [idx.add_text(text, url="https://example.org/long", title="Long")]
    assert doc.chunks > 10
    hits = await idx.search("topic37", 3)
    assert len(hits) == 1 and "topic37" in hits[0].snippet


@pytest.fixture
def searxng() -> Iterator[Stub]:
    with standin() as server:
        yield server


def _fetcher(*allowed: str) -> SafeFetcher:
    return SafeFetcher(AddressPolicy.allowing(allowed), timeout_s=5.0, max_bytes=1 << 20)


async def test_searxng_results_become_hits(searxng: Stub) -> None:
    backend = SearxngBackend(searxng.url + "/", _fetcher("127.0.0.1"))
    try:
        hits = await backend.search("sea otters sleep", 5)
    finally:
        await backend.aclose()
    assert hits == [
        SearchHit(
            "Sea otter - Wikipedia",
            "https://en.wikipedia.org/wiki/Sea_otter",
            "Sea otters hold hands while they sleep.",
        )
    ]
    (request,) = searxng.snapshot()
    assert request.method == "GET" and request.path == "/search?q=sea+otters+sleep&format=json"


async def test_searxng_limit_is_applied(searxng: Stub) -> None:
    backend = SearxngBackend(searxng.url, _fetcher("127.0.0.0/8"))
    try:
        assert len(await backend.search("is a", 2)) == 2
    finally:
        await backend.aclose()


async def test_a_private_searxng_is_refused_unless_allowed(searxng: Stub) -> None:
    backend = SearxngBackend(searxng.url, _fetcher())
    try:
        with pytest.raises(ToolFailed, match="loopback"):
            await backend.search("otters", 3)
    finally:
        await backend.aclose()
    assert searxng.snapshot() == []


async def test_searxng_without_json_enabled_is_a_tool_failure() -> None:
    with standin(json_enabled=False) as server:
        backend = SearxngBackend(server.url, _fetcher("127.0.0.1"))
        try:
            with pytest.raises(ToolFailed, match="403"):
                await backend.search("otters", 3)
        finally:
            await backend.aclose()


async def test_a_non_searxng_answer_is_a_tool_failure() -> None:
    from tests.media.stub import Reply

    with Stub(lambda request, index: Reply(200, b"<html>not json</html>")) as server:
        backend = SearxngBackend(server.url, _fetcher("127.0.0.1"))
        try:
            with pytest.raises(ToolFailed, match="not SearXNG JSON"):
                await backend.search("otters", 3)
        finally:
            await backend.aclose()
