"""kimiserve as a gateway against the LiteLLM proxy, both in front of the same fast upstream.

(About 630 lines on purpose: the upstream, the load client and the report live in this one file so
that a run is one command with no dependency on the rest of bench/; each part is a section below.)

    .venv/bin/python bench/gateway.py --litellm /work/litellm-venv/bin/litellm \
        [--rounds 3] [--seconds 3] [--streams 1000] [--protocols]

LiteLLM is a bench-only dependency: install it in a venv of its own (its pins are not ours),
`python3 -m venv /work/litellm-venv && /work/litellm-venv/bin/pip install 'litellm[proxy]'`,
and pass its `litellm` command. Without `--litellm` only kimiserve and the upstream are measured.

Three processes on the same cores, started by this script:
- the upstream: a minimal OpenAI-compatible server (this file, `--serve-upstream PORT`: raw ASGI
  under uvicorn with uvloop and httptools) that answers `/v1/chat/completions` at once with
  `max_tokens` tokens (16 here), streamed or not, with vLLM's chunk shapes; `"#hold"` as the
  message holds a stream open, one chunk every 2 s, until the client goes;
- kimiserve (`KIMISERVE_ENGINE=fake` for the embedded engine, which is not used): `kimi-k2.6`
  from a models file whose one upstream is that server, behind an API key (checked per request);
- the LiteLLM proxy (`litellm --config`, one worker, no database, a master key), `kimi-k2.6` as
  `openai/…` at the same upstream.
What each does per request differs: kimiserve looks the key up in SQLite, admits the request
through its pipeline (limits, the account) and writes a usage row (SQLite) when it ends, and
always streams from the upstream (its non-streaming answers are assembled from the stream);
LiteLLM compares the master key and, with no database, records nothing.
The load comes from this process: raw HTTP/1.1 keep-alive connections (httptools parser on
uvloop), so the client costs each target the same and little. Rounds alternate the order of the
targets; each figure is the median over rounds:
- requests/s at concurrency 1, 32, 256: non-streaming chat completions, 16 output tokens;
- streamed chunks/s: 32 concurrent streams of 256 tokens each, `data:` frames counted;
- latency added over calling the upstream directly: p50 and p99 at concurrency 1;
- then `--streams` streams held open at once through each gateway, with the gateway's RSS
  (its process and children) before and while holding.
With `--protocols`, the same kimiserve is also measured through OpenAI's Responses API and
Anthropic's Messages API (the same request in each one's shape), each against chat completions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httptools
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.serverproc import ServerProcess, create_key, free_port

MODEL = "kimi-k2.6"
UPSTREAM_MODEL = "bench-upstream"

# ---- the upstream: as fast as Python serves HTTP ---------------------------------------------

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

JSON_HEADERS = [(b"content-type", b"application/json")]
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": UPSTREAM_MODEL, "object": "model", "owned_by": "bench"}]}
).encode()


def _chunk(cid: str, delta: dict[str, Any], finish: str | None = None) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    body = {"id": cid, "object": "chat.completion.chunk", "created": 0, "model": UPSTREAM_MODEL}
    return b"data: " + json.dumps({**body, "choices": [choice]}).encode() + b"\n\n"


# Each token a different word: LiteLLM ends a stream that repeats one chunk ("model is repeating").
CHUNK_ID = "chatcmpl-bench"
WORDS = [f"w{i} " for i in range(256)]
FIRST = _chunk(CHUNK_ID, {"role": "assistant", "content": ""})
TOKENS = [_chunk(CHUNK_ID, {"content": w}) for w in WORDS]


def _usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": 8, "completion_tokens": tokens, "total_tokens": 8 + tokens}


async def upstream_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    path = scope["path"]
    if scope["method"] == "GET":
        status, body = (200, MODELS_BODY) if path.endswith("/models") else (200, b"{}")
        await send({"type": "http.response.start", "status": status, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": body})
        return
    raw = b""
    while True:
        message = await receive()
        raw += message.get("body", b"")
        if not message.get("more_body"):
            break
    request = json.loads(raw)
    tokens = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
    hold = request["messages"][-1].get("content") == "#hold"
    cid = CHUNK_ID
    if not request.get("stream"):
        answer = {
            "id": cid,
            "object": "chat.completion",
            "created": 0,
            "model": UPSTREAM_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "".join(WORDS[: min(tokens, 256)])},
                    "logprobs": None,
                    "finish_reason": "length",
                }
            ],
            "usage": _usage(tokens),
        }
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        await send({"type": "http.response.body", "body": json.dumps(answer).encode()})
        return
    await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
    if hold:
        await send({"type": "http.response.body", "body": FIRST + TOKENS[0], "more_body": True})
        for i in range(1, tokens):
            try:
                message = await asyncio.wait_for(receive(), 2.0)
            except TimeoutError:
                await send({"type": "http.response.body", "body": TOKENS[i % 256], "more_body": True})
                continue
            if message["type"] == "http.disconnect":
                return
    else:
        # One write per chunk, as a real engine's stream arrives.
        await send({"type": "http.response.body", "body": FIRST, "more_body": True})
        for i in range(tokens):
            await send({"type": "http.response.body", "body": TOKENS[i % 256], "more_body": True})
    end = _chunk(cid, {}, "length")
    usage = b""
    if (request.get("stream_options") or {}).get("include_usage"):
        tail = {"id": cid, "object": "chat.completion.chunk", "created": 0, "model": UPSTREAM_MODEL}
        usage = b"data: " + json.dumps({**tail, "choices": [], "usage": _usage(tokens)}).encode() + b"\n\n"
    await send({"type": "http.response.body", "body": end + usage + b"data: [DONE]\n\n"})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(
        upstream_app,
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        backlog=4096,
    )


# ---- the client: raw HTTP/1.1 keep-alive connections -----------------------------------------


class Connection(asyncio.Protocol):
    """One keep-alive connection; `request` sends a prepared request and waits for its end."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[int] | None = None
        self.first: asyncio.Future[None] | None = None
        self.frames = 0
        self.status = 0
        self.error = b""
        self.lost = False
        self.closing = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.closing:
            return
        if self.first is not None and not self.first.done():
            self.first.set_exception(ConnectionError("connection lost"))
            self.first.exception()  # retrieved: `done` carries the news to whoever waits
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("connection lost"))

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.status != 200:
            self.error += body
        self.frames += body.count(b"data:")
        if self.first is not None and not self.first.done():
            self.first.set_result(None)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result(self.status)

    def send(self, request: bytes) -> asyncio.Future[int]:
        assert self.transport is not None
        loop = asyncio.get_running_loop()
        self.done, self.first = loop.create_future(), loop.create_future()
        self.transport.write(request)
        return self.done

    def close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> Connection:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Connection, "127.0.0.1", port)
    return conn


def http_request(target: Target, body: dict[str, Any]) -> bytes:
    raw = json.dumps(body).encode()
    head = (
        f"POST {target.path} HTTP/1.1\r\nHost: 127.0.0.1:{target.port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n"
    )
    if target.key:
        head += f"Authorization: Bearer {target.key}\r\n"
    if target.path == "/v1/messages":
        head += "anthropic-version: 2023-06-01\r\n"
    return head.encode() + b"\r\n" + raw


def chat(model: str, tokens: int, stream: bool, content: str = "one two three four") -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


def responses(model: str, tokens: int, stream: bool, content: str = "one two three four") -> dict[str, Any]:
    """The same request on OpenAI's Responses API; `store: false`, so no more is written per
    request than for a chat completion (a stored response is one more task row)."""
    return {"model": model, "input": content, "max_output_tokens": tokens, "stream": stream, "store": False}


def messages(model: str, tokens: int, stream: bool, content: str = "one two three four") -> dict[str, Any]:
    """The same request on Anthropic's Messages API."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "stream": stream,
    }


BODIES = {"/v1/chat/completions": chat, "/v1/responses": responses, "/v1/messages": messages}


def body(target: Target, tokens: int, stream: bool) -> dict[str, Any]:
    return BODIES[target.path](target.model, tokens, stream)


@dataclass
class Target:
    name: str
    port: int
    model: str
    key: str = ""
    path: str = "/v1/chat/completions"
    pid: int | None = None


@dataclass
class Load:
    done: int = 0
    frames: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.done / self.seconds

    @property
    def fps(self) -> float:
        return self.frames / self.seconds


async def load(target: Target, request: bytes, concurrency: int, seconds: float) -> Load:
    conns = await asyncio.gather(*(connect(target.port) for _ in range(concurrency)))
    result = Load()
    stop = time.perf_counter() + seconds

    async def worker(conn: Connection) -> None:
        while time.perf_counter() < stop:
            started = time.perf_counter()
            conn.frames = 0
            status = await conn.send(request)
            if status != 200:
                raise SystemExit(f"{target.name}: HTTP {status}: {conn.error[:500]!r}")
            result.latencies.append(time.perf_counter() - started)
            result.done += 1
            result.frames += conn.frames

    started = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        result.seconds = time.perf_counter() - started
        for c in conns:
            c.close()
    return result


# ---- the servers -----------------------------------------------------------------------------


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url} exited at start; see {log}")
        try:
            if httpx.get(url, timeout=1).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"{url} did not start in {timeout_s:.0f} s; see {log}")


def start_upstream(tmp: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    log = tmp / "upstream.log"
    proc = subprocess.Popen(
        [sys.executable, __file__, "--serve-upstream", str(port)],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    wait_healthy(f"http://127.0.0.1:{port}/v1/models", proc, 20, log)
    return proc, port


MODELS_TOML = """
[[models]]
id = "{model}"

[[models.upstreams]]
url = "http://127.0.0.1:{port}/v1"
model = "{upstream}"
dialect = "openai"
max_concurrency = {concurrency}
"""


def start_kimiserve(tmp: Path, upstream_port: int, streams: int) -> tuple[ServerProcess, Target]:
    models = tmp / "models.toml"
    models.write_text(
        MODELS_TOML.format(model=MODEL, port=upstream_port, upstream=UPSTREAM_MODEL, concurrency=streams + 64)
    )
    data = tmp / "kimiserve"
    key = create_key(data, name="bench")
    env = {
        "KIMISERVE_ENGINE": "fake",
        "KIMISERVE_MODELS_FILE": str(models),
        "KIMISERVE_LOG_LEVEL": "warning",
        "KIMISERVE_MAX_WAITING": str(streams + 64),
    }
    server = ServerProcess(data, env=env)
    server.start()
    assert server.proc is not None
    return server, Target("kimiserve", server.port, MODEL, key=key, pid=server.proc.pid)


LITELLM_KEY = "sk-bench-" + "0" * 48  # its master key: checked per request, as kimiserve's key is
LITELLM_CONFIG = """
model_list:
  - model_name: {model}
    litellm_params:
      model: openai/{upstream}
      api_base: http://127.0.0.1:{port}/v1
      api_key: none
litellm_settings:
  telemetry: false
general_settings:
  master_key: {key}
"""


def start_litellm(command: str, tmp: Path, upstream_port: int) -> tuple[subprocess.Popen[bytes], Target]:
    config = tmp / "litellm.yaml"
    config.write_text(
        LITELLM_CONFIG.format(model=MODEL, upstream=UPSTREAM_MODEL, port=upstream_port, key=LITELLM_KEY)
    )
    port = free_port()
    log = tmp / "litellm.log"
    env = {
        **os.environ,
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
        "LITELLM_TELEMETRY": "False",
    }
    proc = subprocess.Popen(
        [command, "--config", str(config), "--host", "127.0.0.1", "--port", str(port), "--num_workers", "1"],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    wait_healthy(f"http://127.0.0.1:{port}/health/liveliness", proc, 180, log)
    return proc, Target("litellm", port, MODEL, key=LITELLM_KEY, pid=proc.pid)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, MiB."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


async def hold_streams(target: Target, streams: int) -> tuple[float, float, float, int]:
    """Open `streams` streams at once, wait (up to 120 s) for every first chunk; RSS before and
    while held, the seconds until all were open, and how many were."""
    assert target.pid is not None
    before = rss_mb(target.pid)
    request = http_request(target, chat(target.model, 60, True, "#hold"))
    conns: list[Connection] = []
    for i in range(0, streams, 100):  # connect in batches (the listen backlog)
        conns += await asyncio.gather(*(connect(target.port) for _ in range(min(100, streams - i))))
    started = time.perf_counter()
    for c in conns:
        c.send(request)
    firsts = [c.first for c in conns if c.first is not None]
    await asyncio.wait(firsts, timeout=120)
    opened = time.perf_counter() - started
    await asyncio.sleep(3)  # held: keep-alive timers and the upstream's chunks tick
    ok = sum(1 for c in conns if not c.lost and c.status == 200 and c.first is not None and c.first.done())
    during = rss_mb(target.pid)
    for c in conns:
        c.close()
    await asyncio.sleep(2)
    return before, during, opened, ok


# ---- the run ---------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(targets: list[Target], args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    out: dict[str, dict[str, list[float]]] = {t.name: {} for t in targets}

    def put(target: Target, metric: str, value: float) -> None:
        out[target.name].setdefault(metric, []).append(value)

    for target in targets:  # warm up: connections, imports, caches
        await load(target, http_request(target, body(target, 16, False)), 32, 1.0)
        await load(target, http_request(target, body(target, 16, True)), 8, 0.5)
    for r in range(args.rounds):
        order = targets if r % 2 == 0 else list(reversed(targets))
        for target in order:
            plain = http_request(target, body(target, 16, False))
            for concurrency in (1, 32, 256):
                result = await load(target, plain, concurrency, args.seconds)
                put(target, f"rps{concurrency}", result.rps)
                if concurrency == 1:
                    put(target, "p50", pct(result.latencies, 0.5) * 1000)
                    put(target, "p99", pct(result.latencies, 0.99) * 1000)
            streams = http_request(target, body(target, 256, True))
            streamed = await load(target, streams, 32, args.seconds)
            put(target, "fps", streamed.fps)
            print(
                f"round {r + 1} {target.name:9}: "
                + ", ".join(f"{k} {v[-1]:.1f}" for k, v in out[target.name].items()),
                flush=True,
            )
    return out


Held = tuple[float, float, float, int]


def report(results: dict[str, dict[str, list[float]]], held: dict[str, Held]) -> None:
    med = {name: {k: statistics.median(v) for k, v in m.items()} for name, m in results.items()}
    protocols = {n: med.pop(n) for n in PROTOCOLS if n in med}
    gateways = [n for n in med if n != "upstream"]
    direct = med["upstream"]
    print("\n| | " + " | ".join(med) + " | " + " | ".join(f"kimiserve / {g}" for g in gateways[1:]) + " |")
    print("|---" * (1 + len(med) + len(gateways) - 1) + "|")
    rows = [
        ("requests/s, concurrency 1", "rps1"),
        ("requests/s, concurrency 32", "rps32"),
        ("requests/s, concurrency 256", "rps256"),
        ("streamed chunks/s (32 streams)", "fps"),
        ("latency p50, ms (concurrency 1)", "p50"),
        ("latency p99, ms (concurrency 1)", "p99"),
    ]
    for label, key in rows:
        rate = key.startswith(("rps", "fps"))
        cells = [f"{med[n][key]:.1f}" if rate else f"{med[n][key]:.2f}" for n in med]
        ratios = []
        for g in gateways[1:]:
            a, b = med["kimiserve"][key], med[g][key]
            ratios.append(f"{a / b:.2f}x" if key.startswith(("rps", "fps")) else f"{b / a:.2f}x faster")
        print(f"| {label} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")
    for key in ("p50", "p99"):
        added = [f"{med[g][key] - direct[key]:+.2f}" for g in gateways]
        print(f"| added {key}, ms | – | " + " | ".join(added) + " |" + " |" * (len(gateways) - 1))
    if protocols:
        print("\n| kimiserve, by protocol | chat completions | " + " | ".join(protocols) + " |")
        print("|---" * (2 + len(protocols)) + "|")
        chat_m = med["kimiserve"]
        for label, key in rows[:2] + rows[3:4]:
            cells = [f"{m[key]:.1f} ({m[key] / chat_m[key]:.2f}x)" for m in protocols.values()]
            print(f"| {label} | {chat_m[key]:.1f} | " + " | ".join(cells) + " |")
        for key in ("p50", "p99"):
            cells = [f"{m[key] - direct[key]:+.2f}" for m in protocols.values()]
            print(
                f"| added {key}, ms (concurrency 1) | {chat_m[key] - direct[key]:+.2f} | "
                + " | ".join(cells)
                + " |"
            )
    for name, (before, during, opened, ok) in held.items():
        print(
            f"| {name}: {STREAMS_HELD} streams held | {ok} open after {opened:.1f} s; RSS {before:.0f} MiB "
            f"idle → {during:.0f} MiB held (+{during - before:.0f}) |"
        )


STREAMS_HELD = 1000
PROTOCOLS = ("responses", "messages")  # kimiserve's other protocols, with --protocols


async def run(args: argparse.Namespace) -> None:
    global STREAMS_HELD
    STREAMS_HELD = args.streams
    tmp = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    upstream, upstream_port = start_upstream(tmp)
    kimiserve: ServerProcess | None = None
    litellm: subprocess.Popen[bytes] | None = None
    try:
        kimiserve, kimi = start_kimiserve(tmp, upstream_port, args.streams)
        targets = [Target("upstream", upstream_port, UPSTREAM_MODEL, pid=upstream.pid), kimi]
        if args.protocols:  # the same kimiserve process, through its other protocols
            for name, path in (("responses", "/v1/responses"), ("messages", "/v1/messages")):
                targets.append(Target(name, kimi.port, MODEL, key=kimi.key, path=path, pid=kimi.pid))
        if args.litellm:
            litellm, lite = start_litellm(args.litellm, tmp, upstream_port)
            targets.append(lite)
        print(f"load {os.getloadavg()[0]:.2f} at start; logs in {tmp}", flush=True)
        results = await measure(targets, args)
        held = {}
        for target in [t for t in targets[1:] if t.name not in PROTOCOLS]:
            held[target.name] = await hold_streams(target, args.streams)
            print(f"{target.name}: held {args.streams} streams: {held[target.name]}", flush=True)
        print(f"load {os.getloadavg()[0]:.2f} at the end")
        report(results, held)
    finally:
        if litellm is not None:
            stop(litellm)
        if kimiserve is not None:
            kimiserve.stop()
        stop(upstream)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--litellm", help="the LiteLLM proxy's `litellm` command (its own venv)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measurement")
    parser.add_argument("--streams", type=int, default=1000, help="streams held open at the end")
    parser.add_argument(
        "--protocols", action="store_true", help="also kimiserve's Responses and Messages APIs, beside chat"
    )
    parser.add_argument("--serve-upstream", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_upstream:
        serve_upstream(args.serve_upstream)
        return
    uvloop.run(run(args))


if __name__ == "__main__":
    main()
