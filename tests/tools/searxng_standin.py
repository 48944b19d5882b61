"""A stand-in SearXNG: a real HTTP server on loopback answering `GET /search?q=…&format=json`.

The response format follows SearXNG itself:
- docs.searxng.org, "Search API" (`docs/dev/search_api.rst`): `GET /search` with `q` and
  `format=json`; the JSON format must be enabled in `settings.yml` (`search.formats`), otherwise
  the instance answers 403 (`searx/webapp.py`, the `/search` route: `flask.abort(403)`);
- `searx/webutils.py`, `get_json_response`: the body is an object with `query`,
  `number_of_results`, `results`, `answers`, `corrections`, `infoboxes`, `suggestions` and
  `unresponsive_engines`;
- `searx/results.py` / `searx/result_types/` (the main result type): each result carries `url`,
  `title`, `content`, `engine`, `engines`, `positions`, `score`, `category`, `parsed_url`,
  `template`, `publishedDate` (null when unknown) and `thumbnail`/`img_src`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from tests.media.stub import Received, Reply, Stub


@dataclass(frozen=True)
class Page:
    title: str
    url: str
    content: str


CORPUS = (
    Page(
        "Sea otter - Wikipedia",
        "https://en.wikipedia.org/wiki/Sea_otter",
        "Sea otters hold hands while they sleep.",
    ),
    Page("Moonshot AI", "https://www.moonshot.ai/", "Kimi K2.6 is a mixture-of-experts model."),
    Page("SearXNG", "https://docs.searxng.org/", "SearXNG is a free internet metasearch engine."),
)


def _result(page: Page, position: int) -> dict[str, object]:
    parts = urlsplit(page.url)
    return {
        "url": page.url,
        "title": page.title,
        "content": page.content,
        "engine": "duckduckgo",
        "engines": ["duckduckgo", "brave"],
        "positions": [position],
        "score": 2.0 / position,
        "category": "general",
        "parsed_url": [parts.scheme, parts.netloc, parts.path, "", parts.query, parts.fragment],
        "template": "default.html",
        "publishedDate": None,
        "thumbnail": "",
        "img_src": "",
        "priority": "",
    }


def answer(request: Received, index: int, *, json_enabled: bool = True) -> Reply:
    split = urlsplit(request.path)
    if split.path != "/search":
        return Reply(404, b"Not Found")
    params = parse_qs(split.query)
    if params.get("format") != ["json"] or not json_enabled:
        return Reply(403, b"Forbidden")
    query = params.get("q", [""])[0]
    words = {w.lower() for w in query.split()}
    found = [p for p in CORPUS if words & {w.lower().strip(".") for w in f"{p.title} {p.content}".split()}]
    body = {
        "query": query,
        "number_of_results": 0,
        "results": [_result(p, i) for i, p in enumerate(found, 1)],
        "answers": [],
        "corrections": [],
        "infoboxes": [],
        "suggestions": [f"{query} facts"],
        "unresponsive_engines": [["google", "timeout"]],
    }
    return Reply(200, json.dumps(body).encode(), {"Content-Type": "application/json"})


def standin(*, json_enabled: bool = True) -> Stub:
    return Stub(lambda request, index: answer(request, index, json_enabled=json_enabled))
