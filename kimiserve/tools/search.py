"""Search backends for the built-in search tool: one seam, two backends.

- `LocalIndex`: SQLite FTS5 over text and Markdown files the operator adds
  (`kimiserve search add PATH…`), kept in `search.db` in the data directory. The zero-config
  default: it needs nothing but the documents.
- `SearxngBackend`: a self-hosted SearXNG's JSON API (`GET {search_url}/search?q=…&format=json`),
  reached through the SSRF-safe `SafeFetcher` (a private SearXNG host must be listed in
  `allow_private_hosts`, as for every other URL the server fetches).

A backend that fails at query time raises `ToolFailed` (the model reads the message); a server
with no backend at all raises `ToolUnavailable` naming `tools` when the tool is built.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlencode

from kimiserve.media.fetch import FetchError, SafeFetcher
from kimiserve.tools.errors import ToolFailed

INDEX_FILE = "search.db"
TEXT_SUFFIXES = frozenset({".md", ".markdown", ".txt", ".rst", ".text"})
CHUNK_CHARS = 1200
SNIPPET_CHARS = 300


@dataclass(frozen=True)
class SearchHit:
    title: str
    url: str
    snippet: str


class SearchBackend(Protocol):
    name: str

    async def search(self, query: str, limit: int) -> list[SearchHit]: ...


@dataclass(frozen=True)
class IndexedDocument:
    title: str
    url: str
    chunks: int


class LocalIndex:
    """An FTS5 index of documents; every call opens its own connection in a worker thread."""

    name = "local"

    def __init__(self, path: Path) -> None:
        self.path = path

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path)
        db.executescript(
            """
            CREATE TABLE IF NOT EXISTS documents (
                id INTEGER PRIMARY KEY, url TEXT NOT NULL UNIQUE, title TEXT NOT NULL,
                added_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP);
            CREATE VIRTUAL TABLE IF NOT EXISTS chunks USING fts5(
                title, content, document_id UNINDEXED, tokenize = 'porter unicode61');
            """
        )
        return db

    def add_text(self, text: str, *, url: str, title: str | None = None) -> IndexedDocument:
        """Index (or re-index) one document under `url`."""
        title = title or _title_of(text) or url.rsplit("/", 1)[-1]
        pieces = list(_chunks(text))
        db = self._connect()
        try:
            with db:
                old = db.execute("SELECT id FROM documents WHERE url = ?", (url,)).fetchone()
                if old is not None:
                    db.execute("DELETE FROM chunks WHERE document_id = ?", (old[0],))
                    db.execute("DELETE FROM documents WHERE id = ?", (old[0],))
                doc_id = db.execute(
                    "INSERT INTO documents (url, title) VALUES (?, ?)", (url, title)
                ).lastrowid
                db.executemany(
                    "INSERT INTO chunks (title, content, document_id) VALUES (?, ?, ?)",
                    [(title, piece, doc_id) for piece in pieces],
                )
        finally:
            db.close()
        return IndexedDocument(title, url, len(pieces))

    def add_path(self, path: Path, *, url: str | None = None) -> list[IndexedDocument]:
        """Index a text/Markdown file, or every such file under a directory."""
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
            return [self.add_text(f.read_text(errors="replace"), url=f.resolve().as_uri()) for f in files]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file or directory.")
        text = path.read_text(errors="replace")
        return [self.add_text(text, url=url or path.resolve().as_uri())]

    def documents(self) -> list[IndexedDocument]:
        if not self.path.exists():
            return []
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT d.title, d.url, count(c.rowid) FROM documents d "
                "LEFT JOIN chunks c ON c.document_id = d.id GROUP BY d.id ORDER BY d.id"
            ).fetchall()
        finally:
            db.close()
        return [IndexedDocument(title, url, n) for title, url, n in rows]

    def search_now(self, query: str, limit: int) -> list[SearchHit]:
        match = _fts_query(query)
        if not match or not self.path.exists():
            return []
        db = self._connect()
        try:
            rows = db.execute(
                "SELECT d.title, d.url, snippet(chunks, 1, '', '', '…', 40), bm25(chunks, 5.0, 1.0) AS rank "
                "FROM chunks JOIN documents d ON d.id = chunks.document_id "
                "WHERE chunks MATCH ? ORDER BY rank LIMIT ?",
                (match, limit * 4),
            ).fetchall()
        finally:
            db.close()
        hits: dict[str, SearchHit] = {}
        for title, url, snippet, _ in rows:  # best chunk per document
            hits.setdefault(url, SearchHit(title, url, _one_line(snippet)))
        return list(hits.values())[:limit]

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        try:
            return await asyncio.to_thread(self.search_now, query, limit)
        except sqlite3.Error as exc:
            raise ToolFailed(f"The local search index could not be read: {exc}.") from exc


class SearxngBackend:
    """SearXNG's JSON API: `results[].title`, `.url`, `.content` become hits."""

    name = "searxng"

    def __init__(self, base_url: str, fetcher: SafeFetcher) -> None:
        self.base_url = base_url.rstrip("/")
        self._fetcher = fetcher

    async def search(self, query: str, limit: int) -> list[SearchHit]:
        url = f"{self.base_url}/search?{urlencode({'q': query, 'format': 'json'})}"
        try:
            fetched = await self._fetcher.get(url)
        except FetchError as exc:
            raise ToolFailed(f"The search backend did not answer: {exc}") from exc
        try:
            body = json.loads(fetched.content)
            results = body["results"]
            if not isinstance(results, list):
                raise TypeError("results is not a list")
        except (ValueError, KeyError, TypeError) as exc:
            raise ToolFailed("The search backend's answer is not SearXNG JSON.") from exc
        hits: list[SearchHit] = []
        for item in results:
            if not isinstance(item, dict) or not isinstance(item.get("url"), str):
                continue
            title = item.get("title") if isinstance(item.get("title"), str) else item["url"]
            content = item.get("content") if isinstance(item.get("content"), str) else ""
            hits.append(SearchHit(str(title), item["url"], _one_line(str(content))))
            if len(hits) == limit:
                break
        return hits

    async def aclose(self) -> None:
        await self._fetcher.aclose()


def _one_line(text: str) -> str:
    return " ".join(text.split())[:SNIPPET_CHARS]


def _title_of(text: str) -> str | None:
    for line in text.splitlines()[:40]:
        stripped = line.strip()
        if stripped.startswith("#"):
            return stripped.lstrip("#").strip() or None
    return None


def _chunks(text: str) -> Iterable[str]:
    """Paragraph-aligned pieces of about CHUNK_CHARS characters (a long paragraph is cut)."""
    current = ""
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        while len(para) > CHUNK_CHARS:
            if current:
                yield current
                current = ""
            yield para[:CHUNK_CHARS]
            para = para[CHUNK_CHARS:]
        if current and len(current) + len(para) + 2 > CHUNK_CHARS:
            yield current
            current = ""
        if para:
            current = f"{current}\n\n{para}" if current else para
    if current:
        yield current


def _fts_query(query: str) -> str:
    """A free-text query as an FTS5 expression: any of its words, each quoted (no FTS syntax)."""
    words = re.findall(r"\w+", query.lower())
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))
