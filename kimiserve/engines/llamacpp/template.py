"""Rendering messages with the model's own chat template (GGUF `tokenizer.chat_template`).

The template is Jinja, rendered the way Hugging Face transformers does it (sandboxed,
trim_blocks/lstrip_blocks, `tojson`, `raise_exception`), with `add_generation_prompt=True`.
A GGUF without a template falls back to ChatML.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from kimiserve.domain.types import Message, ToolSpec
from kimiserve.errors import InvalidRequest, ModelLoadError

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _raise(message: str) -> None:
    raise InvalidRequest(f"The chat template rejected the messages: {message}", parameter="messages")


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


class ChatTemplate:
    def __init__(self, source: str | None, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(
            loader=jinja2.BaseLoader(),
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=[jinja2.ext.loopcontrols],
        )
        env.filters["tojson"] = _tojson
        env.globals["raise_exception"] = _raise
        env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
        try:
            self._template = env.from_string(source or CHATML)
        except jinja2.TemplateError as exc:
            raise ModelLoadError(f"The model's chat template does not compile: {exc}") from exc
        self._bos = bos_token
        self._eos = eos_token

    def render(self, messages: tuple[Message, ...], tools: tuple[ToolSpec, ...] = ()) -> str:
        try:
            return self._template.render(
                messages=[_message(m) for m in messages],
                tools=[_tool(t) for t in tools] or None,
                add_generation_prompt=True,
                bos_token=self._bos,
                eos_token=self._eos,
            )
        except InvalidRequest:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError) as exc:
            raise InvalidRequest(
                f"The chat template could not render the messages: {exc}", parameter="messages"
            ) from exc


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": call.arguments},
            }
            for call in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool(tool: ToolSpec) -> dict[str, Any]:
    try:
        parameters = json.loads(tool.parameters)
    except ValueError:
        parameters = {}
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": parameters},
    }
