"""`kimiserve search …`: add documents to the local search index, list them, query it."""

from __future__ import annotations

import argparse
import asyncio
import sys

from kimiserve.cli.output import print_table, show
from kimiserve.settings import Settings
from kimiserve.tools.builtin import search_backend_from
from kimiserve.tools.search import INDEX_FILE, LocalIndex


async def run(settings: Settings, args: argparse.Namespace) -> int:
    index = LocalIndex(settings.data_dir / INDEX_FILE)
    if args.search_command == "add":
        if args.url and len(args.paths) != 1:
            print("kimiserve: --url names one document; give exactly one file with it.", file=sys.stderr)
            return 2
        added = []
        for path in args.paths:
            try:
                added += await asyncio.to_thread(index.add_path, path, url=args.url)
            except (OSError, UnicodeError) as exc:
                print(f"kimiserve: cannot index {path}: {exc}", file=sys.stderr)
                return 1
        for doc in added:
            print(f"Indexed {doc.url} ({doc.title!r}, {doc.chunks} chunks).")
        if not added:
            print("No text or Markdown files found.")
            return 1
        return 0
    if args.search_command == "list":
        docs = await asyncio.to_thread(index.documents)
        if args.json:
            show([doc.__dict__ for doc in docs], as_json=True)
        else:
            print_table(["title", "url", "chunks"], [[d.title, d.url, d.chunks] for d in docs])
        return 0
    backend = search_backend_from(settings)  # `query` asks the backend the server would use
    try:
        hits = await backend.search(args.query, args.limit)
    finally:
        aclose = getattr(backend, "aclose", None)
        if aclose is not None:
            await aclose()
    if args.json:
        show([hit.__dict__ for hit in hits], as_json=True)
        return 0
    for i, hit in enumerate(hits, 1):
        print(f"[{i}] {hit.title}\n    {hit.url}\n    {hit.snippet}")
    if not hits:
        print("No results.")
    return 0
