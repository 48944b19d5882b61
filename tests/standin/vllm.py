"""A stand-in for vLLM serving Kimi K2.6 (`--tool-call-parser kimi_k2 --reasoning-parser kimi_k2`):
the shapes of its OpenAI-compatible server, replayed. README.md cites the source of each shape.

What it answers depends on the request, so tests can steer it:
- thinking: on unless `chat_template_kwargs.thinking` is false → reasoning chunks first
  (field `reasoning`, or `reasoning_content` with `--reasoning-field reasoning_content`);
- tools declared and the last message is a user message → one tool call, as vLLM's kimi_k2
  parser streams it (`functions.{name}:{idx}` id, arguments split over deltas);
  `#badtool` in it → arguments that break the schema (the first time per conversation, or
  always with `#badtool-always`); `#parallel` in it → a second call in the same turn (of the
  last tool declared, `{"city": "Shanghai"}`), streamed as vLLM streams several: each call's
  deltas under its own `index` (0, 1), its id and name in its first delta;
- `#error400` → vLLM's 400 error body naming `param`; `#error500` → a 500; `#die` → the process
  exits mid-stream; `#slow` → 50 ms between chunks; `#reason-N` → N reasoning chunks (one token
  each) instead of three;
- `#notool` → a plain echoed answer even with tools declared; `#agent-call-NAME {json}` → one
  call of the declared tool NAME with that JSON object as arguments (an agent's own tools, e.g. Claude
  Code's `Bash`), and once its result comes back, an answer echoing the result's text;
- `continue_final_message` with a final assistant message continues it, as the engine named by
  `--engine` does (README: vLLM renders the message through the chat template, its `reasoning`
  kept when `preserve_thinking` or thinking is on, and parses all output as content when
  thinking is off; SGLang appends the content after the generation prompt and parses the output
  as content when that content holds `</think>`); the answer echoes the last *user* message;
- `#call:NAME {json}` in the last user message → one call of the tool NAME with those arguments
  (an agent's tool, whatever its schema), and once its result is the last message, the answer
  `tool said: <the result>` (no second call); `#notool` → the echo even with tools declared;
- `stream_options.continuous_usage_stats` → a running `usage` in every chunk, as vLLM sends it;
- K2.6's own mistakes (README: the issue each replays), marker anywhere in the conversation:
  `#empty-answer` / `#reasoning-only` → reasoning, then no content and no call, `stop` (the first
  time this exact conversation is asked and not as a continuation; always with `-always`);
  `#leak-content` / `#leak-reasoning` → the tool call as raw `<|tool_calls_section_begin|>…`
  markers in `content` / the reasoning, in small pieces; `#leak-call-id` / `#leak-glued-id` →
  those markers with the id `call_2` / `functions{name}5`; `#call-id` → a parsed call whose id
  is `call_2`; `#split-calls` → two calls streamed under one `index`, the second with its own id;
  `#merged-calls` → two calls' arguments in one call;
- `--engine moonshot`: thinking is `thinking.type` and an assistant tool-call message without
  `reasoning_content` while it is enabled is Moonshot's 400;
- otherwise the answer echoes the last message's words (one chunk per word).
Usage comes in a last chunk with `prompt_tokens_details.cached_tokens`: a prompt whose first
message was seen before under the same `cache_salt` counts that message as cached.
Every request body is kept; `GET /stats` returns them with this replica's name.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

MODEL = "moonshotai/Kimi-K2.6"


def text_of(message: dict[str, Any]) -> str:
    """A message's text: `content` is a string or, with images or videos, a list of parts (the
    OpenAI content-part form vLLM takes); the stand-in reads only the text parts."""
    content = message.get("content") or ""
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
    return str(content)


def words(text: str) -> int:
    return len(text.split())


def error(status: int, message: str, kind: str, param: str | None = None) -> JSONResponse:
    # vllm/entrypoints/openai/engine/protocol.py: ErrorResponse{error: ErrorInfo{message, type, param, code}}
    body = {"error": {"message": message, "type": kind, "param": param, "code": status}}
    return JSONResponse(body, status_code=status)


class Standin:
    def __init__(self, name: str, reasoning_field: str, engine: str = "vllm") -> None:
        self.name = name
        self.reasoning_field = reasoning_field
        self.engine = engine
        self.requests: list[dict[str, Any]] = []
        self.seen_prefixes: set[tuple[str, str]] = set()
        self.completed = 0
        self.cancelled = 0  # streams whose client went away before the end (vLLM aborts those)

    def app(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/v1/chat/completions", self.chat, methods=["POST"]),
                Route("/v1/models", self.models),
                Route("/health", lambda _: Response(status_code=200)),
                Route("/stats", self.stats),
            ]
        )

    async def models(self, _: Request) -> JSONResponse:
        card = {
            "id": MODEL,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "vllm",
            "root": MODEL,
            "parent": None,
            "max_model_len": 262144,
            "permission": [],
        }
        return JSONResponse({"object": "list", "data": [card]})

    async def stats(self, _: Request) -> JSONResponse:
        return JSONResponse(
            {
                "name": self.name,
                "requests": self.requests,
                "completed": self.completed,
                "cancelled": self.cancelled,
            }
        )

    async def chat(self, request: Request) -> Response:
        body = await request.json()
        self.requests.append(body)
        messages = body.get("messages") or []
        last = messages[-1] if messages else {"role": "user", "content": ""}
        text = text_of(last)
        if "#error400" in text:
            return error(400, "temperature must be in [0, 2], got 7.0.", "BadRequestError", "temperature")
        if "#error500" in text:
            return error(500, "EngineCore encountered an issue.", "InternalServerError")
        if self.engine == "moonshot" and (body.get("thinking") or {}).get("type") == "enabled":
            for i, m in enumerate(messages):
                if m.get("role") == "assistant" and m.get("tool_calls") and "reasoning_content" not in m:
                    message = (
                        "thinking is enabled but reasoning_content is missing in assistant tool call "
                        f"message at index {i}"
                    )
                    return JSONResponse(
                        {"error": {"message": message, "type": "invalid_request_error"}}, status_code=400
                    )
        if (
            self.engine == "vllm"
            and body.get("continue_final_message")
            and body.get("add_generation_prompt", True)
        ):
            # vLLM's ChatCompletionRequest validator (`check_generation_prompt`)
            message = "Cannot set both `continue_final_message` and `add_generation_prompt` to True."
            return error(400, message, "BadRequestError")
        return StreamingResponse(
            self.counted(request, self.stream(body, messages, last, text)), media_type="text/event-stream"
        )

    async def counted(self, request: Request, chunks: AsyncIterator[str]) -> AsyncIterator[str]:
        """Stops generating when the client goes away, as vLLM aborts a disconnected request."""
        try:
            async for data in chunks:
                if await request.is_disconnected():
                    self.cancelled += 1
                    return
                yield data
            self.completed += 1
        except (asyncio.CancelledError, GeneratorExit):
            self.cancelled += 1
            raise

    async def stream(
        self, body: dict[str, Any], messages: list[dict[str, Any]], last: dict[str, Any], text: str
    ) -> AsyncIterator[str]:
        cid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        delay = 0.05 if "#slow" in text else 0.0
        kwargs = body.get("chat_template_kwargs") or {}
        thinking = kwargs.get("thinking", True)
        if self.engine == "moonshot":
            thinking = (body.get("thinking") or {}).get("type") != "disabled"
        history = json.dumps(messages)
        asked_before = any(r.get("messages") == messages for r in self.requests[:-1])
        continuing = bool(body.get("continue_final_message")) and last.get("role") == "assistant"
        if continuing:
            # The answer continues the final assistant message: the words it echoes are the
            # last user message's; whether its output is reasoning is the engine's rule.
            text = next((text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
            if self.engine == "sglang":  # its detector is told the previous content
                thinking = thinking and "</think>" not in text_of(last)
            last = {"role": "user", "content": text}
        prompt = sum(words(text_of(m)) + 1 for m in messages)
        if (
            continuing
            and self.engine == "vllm"
            and (kwargs.get("thinking", True) or kwargs.get("preserve_thinking"))
        ):
            prompt += words(str(last_reasoning(messages)))  # rendered by the chat template
        running = (body.get("stream_options") or {}).get("continuous_usage_stats", False)
        emitted = 0

        def chunk(delta: dict[str, Any], finish: str | None = None, tokens: int = 0) -> str:
            nonlocal emitted
            emitted += tokens
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            data: dict[str, Any] = {
                "id": cid,
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [choice],
            }
            if running:  # vLLM: `include_continuous_usage` puts UsageInfo in each chunk
                data["usage"] = {
                    "prompt_tokens": prompt,
                    "completion_tokens": emitted,
                    "total_tokens": prompt + emitted,
                }
            return f"data: {json.dumps(data)}\n\n"

        produced = 0
        yield chunk({"role": "assistant", "content": ""})
        reasoning_tokens = 0
        if thinking:
            long = next((w for w in text.split() if w.startswith("#reason-")), None)
            count = int(long.removeprefix("#reason-")) if long else 3
            pieces = (
                ["The user", " asks;", " answer briefly."]
                if long is None
                else [f"{'' if i == 0 else ' '}step{i}" for i in range(count)]
            )
            for piece in pieces:
                await asyncio.sleep(delay)
                yield chunk({self.reasoning_field: piece}, tokens=1)
                reasoning_tokens += 1
        tools = body.get("tools") or []
        finish = "stop"
        scripted = scripted_call(messages)  # `#call:NAME {json}` or `#agent-call-NAME {json}`
        if scripted is not None and last.get("role") == "tool":  # the scripted call's result: say it
            marker = scripted[0]
            text, tools = ("tool said: " + text_of(last) if marker == "#call:" else text), []
        if "#notool" in text:
            tools = []
        if scripted is not None and last.get("role") == "user" and tools:
            marker, name, arguments = scripted
            if marker == "#call:":
                call = {"id": f"call_{uuid.uuid4().hex[:12]}", "type": "function", "index": 0}
                yield chunk({"tool_calls": [{**call, "function": {"name": name, "arguments": ""}}]}, tokens=2)
                yield chunk({"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}, tokens=4)
            else:
                index = sum(len(m.get("tool_calls") or []) for m in messages)
                call = {"id": f"functions.{name}:{index}", "type": "function", "index": 0}
                yield chunk(
                    {"tool_calls": [{**call, "function": {"name": name, "arguments": arguments}}]}, tokens=6
                )
            produced += 6
            finish = "tool_calls"
            text = ""
            tools = []
        fault = next((f for f in FAULTS if f in history), None)
        if fault in ("#empty-answer", "#reasoning-only") and (
            f"{fault}-always" in history or not (continuing or asked_before)
        ):
            tools = []  # K2.6 ends the turn right after `</think>`: no content, no call
            text = ""
        name = tools[0]["function"]["name"] if tools else ""
        index = sum(len(m.get("tool_calls") or []) for m in messages)
        if tools and last.get("role") == "user" and fault in RAW:
            call_id = {"#leak-call-id": "call_2", "#leak-glued-id": f"functions{name}5"}.get(
                fault, f"functions.{name}:{index}"
            )
            raw = raw_section(call_id, '{"city": "Beijing"}')
            field = self.reasoning_field if fault == "#leak-reasoning" else "content"
            if field == "content":
                yield chunk({"content": "Checking. "}, tokens=2)
                produced += 2
            for at in range(0, len(raw), 7):  # split across chunks, markers too
                yield chunk({field: raw[at : at + 7]}, tokens=1)
                produced += field == "content"
                reasoning_tokens += field != "content"
            text = ""
            tools = []
        elif tools and last.get("role") == "user" and fault in ("#call-id", "#split-calls", "#merged-calls"):
            first = "call_2" if fault == "#call-id" else f"functions.{name}:{index}"
            args = '{"city": "Paris"}{"city": "Beijing"}' if fault == "#merged-calls" else '{"city": "Paris"}'
            head = {
                "id": first,
                "type": "function",
                "index": 0,
                "function": {"name": name, "arguments": args},
            }
            yield chunk({"tool_calls": [head]}, tokens=6)
            if fault == "#split-calls":  # the second call's deltas under the first one's index
                second = {
                    "id": f"functions.{name}:{index + 1}",
                    "type": "function",
                    "index": 0,
                    "function": {"name": name, "arguments": '{"city": "Beijing"}'},
                }
                yield chunk({"tool_calls": [second]}, tokens=6)
            produced += 12
            finish = "tool_calls"
            text = ""
            tools = []
        if tools and last.get("role") == "user":
            name = tools[0]["function"]["name"]
            index = sum(len(m.get("tool_calls") or []) for m in messages)
            history = json.dumps(messages)
            bad = "#badtool-always" in history or (
                "#badtool" in history
                and last.get("role") == "user"
                and not any(m.get("role") == "tool" for m in messages)
            )
            args = ['{"city": ', "42}"] if bad else ['{"city": ', '"Beijing"}']
            calls = [(name, args)]
            if "#parallel" in text:  # a second call in the same turn, of the last tool declared
                calls.append((tools[-1]["function"]["name"], ['{"city": ', '"Shanghai"}']))
            for n, (call_name, call_args) in enumerate(calls):
                yield chunk(
                    {
                        "tool_calls": [
                            {
                                "id": f"functions.{call_name}:{index + n}",
                                "type": "function",
                                "index": n,
                                "function": {"name": call_name, "arguments": ""},
                            }
                        ]
                    },
                    tokens=2,
                )
                for part in call_args:
                    await asyncio.sleep(delay)
                    yield chunk({"tool_calls": [{"index": n, "function": {"arguments": part}}]}, tokens=2)
                produced += 6
            finish = "tool_calls"
        elif tools and last.get("role") == "tool":
            # a re-ask (or a tool result): call again, now with valid arguments unless told otherwise
            name = tools[0]["function"]["name"]
            index = sum(len(m.get("tool_calls") or []) for m in messages)
            bad = "#badtool-always" in json.dumps(messages)
            args = '{"city": 42}' if bad else '{"city": "Beijing"}'
            yield chunk(
                {
                    "tool_calls": [
                        {
                            "id": f"functions.{name}:{index}",
                            "type": "function",
                            "index": 0,
                            "function": {"name": name, "arguments": args},
                        }
                    ]
                },
                tokens=6,
            )
            produced += 6
            finish = "tool_calls"
        else:
            for i, word in enumerate(text.split()):
                if word == "#die":
                    await asyncio.sleep(0.05)  # what came before it reaches the client first
                    os._exit(1)  # the replica dies mid-stream, as a crashed engine process does
                await asyncio.sleep(delay)
                yield chunk({"content": ("" if i == 0 else " ") + word}, tokens=1)
                produced += 1
        yield chunk({"content": ""}, finish)
        first = text_of(messages[0]) if messages else ""
        prefix = (str(body.get("cache_salt") or ""), first)
        cached = words(first) + 1 if prefix in self.seen_prefixes else 0
        self.seen_prefixes.add(prefix)
        usage = {
            "prompt_tokens": prompt,
            "total_tokens": prompt + produced + reasoning_tokens,
            "completion_tokens": produced + reasoning_tokens,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning_tokens},
        }
        data = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(data)}\n\n"
        yield "data: [DONE]\n\n"


FAULTS = (
    "#empty-answer",
    "#reasoning-only",
    "#leak-content",
    "#leak-reasoning",
    "#leak-call-id",
    "#leak-glued-id",
    "#call-id",
    "#split-calls",
    "#merged-calls",
)
RAW = ("#leak-content", "#leak-reasoning", "#leak-call-id", "#leak-glued-id")


def raw_section(call_id: str, arguments: str) -> str:
    """One call as K2.6 writes it (MoonshotAI/Kimi-K2 `docs/tool_call_guidance.md`)."""
    return (
        f"<|tool_calls_section_begin|><|tool_call_begin|>{call_id}<|tool_call_argument_begin|>"
        f"{arguments}<|tool_call_end|><|tool_calls_section_end|>"
    )


def scripted_call(messages: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """A scripted call in the last user message: `#call:NAME {json}` (arguments streamed in two
    fragments under a `call_…` id, as OpenAI-style servers do) or `#agent-call-NAME {json}` (one
    fragment under Kimi's `functions.NAME:idx` id); (marker, NAME, the arguments' JSON text)."""
    user = next((text_of(m) for m in reversed(messages) if m.get("role") == "user"), "")
    for marker in ("#call:", "#agent-call-"):
        at = user.find(marker)
        if at < 0:
            continue
        name, _, tail = user[at + len(marker) :].partition(" ")
        tail = tail.lstrip()
        arguments = json.JSONDecoder().raw_decode(tail)[0] if tail.startswith("{") else {}
        return marker, name, json.dumps(arguments)
    return None


def last_reasoning(messages: list[dict[str, Any]]) -> str:
    """The final message's reasoning, under vLLM's name or the older one."""
    final = messages[-1] if messages else {}
    return str(final.get("reasoning") or final.get("reasoning_content") or "")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="standin")
    parser.add_argument("--reasoning-field", default="reasoning", choices=["reasoning", "reasoning_content"])
    parser.add_argument("--engine", default="vllm", choices=["vllm", "sglang", "moonshot"])
    args = parser.parse_args()
    app = Standin(args.name, args.reasoning_field, args.engine).app()
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
