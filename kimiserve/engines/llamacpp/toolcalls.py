"""The embedded model's tool and thinking format: the prompt it sees and the grammar its calls follow.

SmolLM2 has no native tool format, so the engine defines one (Hermes/Qwen style):

- The tools are listed in a system message (appended to the request's own system message, or a
  new one first): one compact JSON line per tool inside `<tools></tools>`, and the call format.
- A call is `<tool_call>{"name":"NAME","arguments":{...}}</tool_call>`; several calls in one turn
  are such blocks one per line (`max_calls`: one under `parallel_tool_calls: false` or a named
  choice). Generated calls are
  written under an llguidance Lark grammar with one alternative per tool: the literal
  `{"name":"NAME","arguments":` followed by `%json{<the tool's schema>}` and `}`, so the name is
  one of the tools and the arguments validate against that tool's schema. Each schema is its own
  `%json` root, so its `#/$defs/...` references resolve as written.
- History: an assistant turn's calls are rendered in that format after its text; a `tool`
  message becomes a user turn `<tool_response>...</tool_response>` (the model's template has no
  tool role). With `keep_reasoning`, an assistant turn's reasoning is rendered before its text as
  `<think>\\n...\\n</think>\\n\\n`; otherwise it is dropped.
- Thinking: the assistant turn is prefilled with `<think>\\n` (THINK_OPEN); the engine closes the
  section with THINK_CLOSE when the budget is spent (`turn.py`).
"""

from __future__ import annotations

import json
from typing import Any

from kimiserve.domain.types import GenerationRequest, Message, ToolCall, ToolSpec
from kimiserve.engines.llamacpp.grammar import JSON_OPTIONS, prepare
from kimiserve.errors import InvalidRequest

CALL_OPEN = "<tool_call>"
CALL_CLOSE = "</tool_call>"
CALLS_APART = "\n"  # between two calls of one turn: `</tool_call>\n<tool_call>`
# At most this many calls in one turn: a small model may otherwise repeat a call until max_tokens.
MAX_CALLS = 16
THINK_OPEN = "<think>\n"
THINK_END = "</think>"
THINK_CLOSE = "\n</think>\n\n"

TOOLS_HEADER = "You may call these functions (JSON signatures):\n<tools>\n"
TOOLS_FOOTER = (
    "\n</tools>\n"
    'To call one, answer <tool_call>{"name": <function-name>, "arguments": <args-json-object>}</tool_call>'
)


def calls_offered(request: GenerationRequest) -> tuple[ToolSpec, ...]:
    """The tools the model may call in this request (none under tool_choice `none`)."""
    choice = request.tool_choice
    if not request.tools or choice.mode == "none":
        return ()
    if choice.mode == "named":
        named = tuple(t for t in request.tools if t.name == choice.name)
        if not named:
            raise InvalidRequest(
                f"tool_choice names {choice.name!r}, which is not among the tools.", parameter="tool_choice"
            )
        return named
    return request.tools


def call_forced(request: GenerationRequest) -> bool:
    return bool(request.tools) and request.tool_choice.mode in ("required", "named")


def max_calls(request: GenerationRequest) -> int:
    """How many calls one turn may make: one under `parallel_tool_calls: false` or a named
    choice (OpenAI: a named function is called exactly once), else up to MAX_CALLS."""
    if not request.parallel_tool_calls or request.tool_choice.mode == "named":
        return 1
    return MAX_CALLS


def calls_before(request: GenerationRequest) -> int:
    """The calls in the conversation's history: the index this turn's first call gets."""
    return sum(len(m.tool_calls) for m in request.messages)


def call_id(name: str, index: int) -> str:
    """Kimi's id of the conversation's `index`-th call (MoonshotAI/Kimi-K2 tool_call_guidance)."""
    return f"functions.{name}:{index}"


def prompt_messages(request: GenerationRequest) -> tuple[Message, ...]:
    """The request's messages in the form the model's chat template renders (see module doc)."""
    out: list[Message] = []
    for m in request.messages:
        if m.role == "assistant":
            text = m.content
            if request.keep_reasoning and m.reasoning:
                text = f"{THINK_OPEN}{m.reasoning}{THINK_CLOSE}{text}"
            text += CALLS_APART.join(CALL_OPEN + _call_json(c) + CALL_CLOSE for c in m.tool_calls)
            out.append(Message(role="assistant", content=text))
        elif m.role == "tool":
            out.append(Message(role="user", content=f"<tool_response>\n{m.content}\n</tool_response>"))
        else:
            out.append(Message(role=m.role, content=m.content))
    if request.tools and request.tool_choice.mode != "none":
        block = tools_block(request.tools)
        if out and out[0].role == "system":
            out[0] = Message(role="system", content=f"{out[0].content}\n\n{block}")
        else:
            out.insert(0, Message(role="system", content=block))
    return tuple(out)


def tools_block(tools: tuple[ToolSpec, ...]) -> str:
    lines = []
    for tool in tools:
        entry: dict[str, Any] = {"name": tool.name}
        if tool.description:
            entry["description"] = tool.description
        entry["parameters"] = _schema(tool)
        lines.append(json.dumps({"type": "function", "function": entry}, separators=(",", ":")))
    return TOOLS_HEADER + "\n".join(lines) + TOOLS_FOOTER


def _call_json(call: ToolCall) -> str:
    try:
        arguments: Any = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        arguments = call.arguments  # kept as the string it was sent as
    return json.dumps({"name": call.name, "arguments": arguments}, separators=(",", ":"), ensure_ascii=False)


def _schema(tool: ToolSpec) -> Any:
    try:
        schema = json.loads(tool.parameters)
    except ValueError:
        return {}
    return schema


def arguments_schema(tool: ToolSpec) -> str:
    """The JSON text of the schema a tool's arguments are generated under.

    An empty schema (`{}`) means any arguments object. The schema is rewritten as a JSON
    schema constraint is (`grammar.prepare`: objects that declare their properties admit no
    others, ...), and llguidance's options (compact JSON, strict, oneOf as anyOf)
    travel in `x-guidance`.
    """
    schema = json.loads(tool.parameters)  # checked by the caller (grammar compile of the schema)
    if schema == {} or schema is True:
        schema = {"type": "object"}
    if isinstance(schema, dict):
        schema = dict(prepare(schema))
        schema["x-guidance"] = dict(JSON_OPTIONS)
    return json.dumps(schema, separators=(",", ":"), ensure_ascii=False)


def call_grammar(tools: tuple[ToolSpec, ...]) -> str:
    """The Lark grammar of one call's JSON body: `{"name":...,"arguments":...}`."""
    rules = []
    for i, tool in enumerate(tools):
        head = call_head(tool)
        rules.append(f"call_{i}: {json.dumps(head)} args_{i} " + '"}"')
        rules.append(f"args_{i}: %json {arguments_schema(tool)}")
    start = "start: " + " | ".join(f"call_{i}" for i in range(len(tools)))
    return "\n".join([start, *rules]) + "\n"


def call_head(tool: ToolSpec) -> str:
    """The text a call of `tool` begins with, up to its arguments (a literal of the grammar)."""
    return '{"name":' + json.dumps(tool.name) + ',"arguments":'


def partial_call(text: str, tools: tuple[ToolSpec, ...], call_id: str) -> ToolCall | None:
    """The call a body cut by max_tokens began, with its arguments as cut (maybe not JSON, as
    OpenAI returns them). The tool is the one whose name was written, or the only one the cut
    text can still begin; None when several can (the name itself was cut)."""
    for tool in tools:
        head = call_head(tool)
        if text.startswith(head):
            return ToolCall(id=call_id, name=tool.name, arguments=text[len(head) :])
    candidates = [tool for tool in tools if call_head(tool).startswith(text)]
    if len(candidates) == 1:
        return ToolCall(id=call_id, name=candidates[0].name, arguments="")
    return None


def parse_call(text: str, tools: tuple[ToolSpec, ...], call_id: str) -> ToolCall | None:
    """The call a complete body encodes (None if it is not a call of one of the tools)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    if not isinstance(body, dict) or set(body) != {"name", "arguments"}:
        return None
    if body["name"] not in {t.name for t in tools}:
        return None
    arguments = json.dumps(body["arguments"], separators=(",", ":"), ensure_ascii=False)
    return ToolCall(id=call_id, name=body["name"], arguments=arguments)
