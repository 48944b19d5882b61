"""Budget forcing over the wire: a thinking level's reasoning budget, enforced on an upstream that
cannot bound reasoning itself.

Kimi K2.6 has only thinking on/off (`chat_template_kwargs.thinking`); Runware's levels and OpenAI's
`reasoning_effort` map to `THINKING_BUDGETS` (low 256, medium 1024, high 4096, xhigh 16384 tokens),
and Anthropic's `thinking.budget_tokens` is taken exactly (`GenerationRequest.thinking_budget`,
`reasoning_budget`). For the `vllm` and `sglang` dialects the engine (engine.py) watches the
reasoning as it streams; when it reaches the budget before any answer, the upstream stream is closed
(vLLM and SGLang abort a request whose client went away) and the answer is asked for by a second
streamed request: the same body plus a final assistant message holding the reasoning so far, closed,
which the upstream continues. The client sees one answer: the reasoning, cut at the
budget, then the content. A level whose budget is not reached costs one request, as before.

Counting: the first request asks for `stream_options.continuous_usage_stats` (vLLM and SGLang
then put a running `usage` in every chunk: vLLM `StreamOptions` / `include_continuous_usage` in
its chat serving, SGLang's `TestContinuousUsageStats`), and the count is its `completion_tokens`;
without it, the count is the reasoning chunks, which vLLM and SGLang stream about one token each
(a chunk may carry several tokens, so the reasoning can then end a little past the budget).

The continuation, per engine (what it relies on):
- vLLM: `continue_final_message: true` + `add_generation_prompt: false` (vLLM refuses both true),
  the final message `{"role": "assistant", "reasoning": R, "content": "\u200b"}` and
  `chat_template_kwargs: {"thinking": false, "preserve_thinking": true}`.
  - vLLM passes an assistant message's `reasoning` to the chat template as both `reasoning` and
    `reasoning_content` (`vllm/entrypoints/chat_utils.py`, `_parse_chat_message_content`);
    `reasoning_content` is sent too for versions that read only that name.
  - Kimi K2.6's chat template renders an assistant turn as `<think>{reasoning_content}</think>
    {content}`, but as `<think></think>{content}` when `thinking` is false and
    `preserve_thinking` is not set (and the turns up to the last plain assistant turn always
    without reasoning unless `preserve_thinking`): so `preserve_thinking: true` keeps R in the
    prompt, closed by `</think>` (K2.6 `chat_template.jinja`; Moonshot's Kimi-Vendor-Verifier
    README for `preserve_thinking`). K2.5's template has no `preserve_thinking`: there the
    continuation answers without seeing the cut reasoning (still one answer, reasoning bounded).
  - With `thinking: false` vLLM's `kimi_k2` reasoning parser is the identity parser, so all the
    continuation is `content` (`vllm/reasoning/kimi_k2_reasoning_parser.py`).
  - transformers' `apply_chat_template(continue_final_message=True)` cuts the rendered prompt
    after the final message's *content*; an empty content would leave the turn's `<|im_end|>` in
    place, so the content is one zero-width space (not whitespace to `str.strip`), which
    kimiserve does not show the client.
- SGLang: `continue_final_message: true`, the final message `{"role": "assistant", "content":
  R + "</think>"}` and `chat_template_kwargs: {"thinking": true}`. SGLang drops that message,
  renders the prompt with the generation prompt (which opens `<think>` when thinking is on) and
  appends the content as is, so the prompt ends `<think>R</think>`; its Kimi reasoning detector,
  told the previous content, sees `</think>` in it and parses the continuation as content
  (sgl-project/sglang `serving_chat.py` `_apply_jinja_template`, `parser/reasoning_parser.py`
  `BaseReasoningFormatDetector(continue_final_message, previous_content)`).
- `moonshot` (Moonshot's API) takes thinking on/off and no prefix of reasoning, `openai` has no
  thinking switch: neither is forced; a level there turns thinking on (moonshot) and reasoning is
  bounded by `maxTokens` only.

Usage is the answer's, as if one request had made it: the first request's prompt, and as
completion the reasoning (all of the cut stream) plus the continuation's tokens, reasoning tokens
likewise. The continuation's prompt (the same prompt plus the reasoning) is not charged again, by
choice: forcing runs only on self-hosted engines (vLLM, SGLang), where that prompt is a
prefix-cache hit (its KV blocks were just computed) rather than a billed input; and the
pipeline's hold (one prompt plus `maxTokens`, what keeps a balance from going below zero) covers
exactly this. The cut stream never sends its last usage chunk, so its cached tokens count as 0
and, without running usage, its prompt is estimated as the continuation's minus the reasoning
counted. `maxTokens` bounds reasoning and answer together: the continuation gets what the
reasoning left of it, and none is sent when nothing is left (the answer ends `length`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kimiserve.domain.types import (
    Event,
    GenerationRequest,
    ReasoningDelta,
    TextDelta,
    Usage,
)
from kimiserve.domain.types import (
    reasoning_budget as request_budget,
)
from kimiserve.engines.openai_compat.config import Dialect
from kimiserve.engines.openai_compat.stream import ChunkReader

FORCED: tuple[Dialect, ...] = ("vllm", "sglang")
ZERO_WIDTH_SPACE = "\u200b"  # the vLLM continuation's content (module docstring)


def reasoning_budget(request: GenerationRequest, dialect: Dialect) -> int | None:
    """The reasoning tokens the request may use, when kimiserve enforces them; None otherwise."""
    if dialect not in FORCED or request.thinking == "none":
        return None
    return request_budget(request)


def with_running_usage(body: dict[str, Any]) -> dict[str, Any]:
    """The body asking for a running `usage` in every chunk (the budget's count)."""
    return {**body, "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


def continuation_body(
    body: dict[str, Any], dialect: Dialect, reasoning: str, max_tokens: int | None
) -> dict[str, Any]:
    """`body` asking the upstream (vLLM or SGLang) to answer after `reasoning`, closed (module
    docstring): the answer is `content`. Also the re-ask of an empty answer (repairs.py)."""
    kwargs = dict(body.get("chat_template_kwargs") or {})
    out = {**body, "stream_options": {"include_usage": True}}
    if dialect == "vllm":
        final: dict[str, Any] = {
            "role": "assistant",
            "content": ZERO_WIDTH_SPACE,
            "reasoning": reasoning,
            "reasoning_content": reasoning,
        }
        kwargs.update(thinking=False, preserve_thinking=True)
        out["add_generation_prompt"] = False
    else:  # sglang: the content is appended after the generation prompt's `<think>`
        final = {"role": "assistant", "content": reasoning + "</think>"}
        kwargs.update(thinking=True)
    out["continue_final_message"] = True
    out["chat_template_kwargs"] = kwargs
    out["messages"] = [*body["messages"], final]
    if max_tokens is not None:
        out["max_tokens"] = max_tokens
    return out


@dataclass
class Forcing:
    """One generation's budget: fed the first stream's events, it says when to cut; then it
    builds the continuation's body and sums the usage of both requests."""

    budget: int
    dialect: Dialect
    max_tokens: int | None
    first: ChunkReader = field(default_factory=ChunkReader)
    second: ChunkReader | None = None  # the continuation's, once sent
    cut: bool = False
    _chunks: int = 0  # reasoning deltas of the first stream
    _reasoning: list[str] = field(default_factory=list)
    _answering: bool = False

    @property
    def spent(self) -> int:
        """Reasoning tokens so far: the running usage where the upstream sends it, else chunks."""
        return self.first.usage.completion_tokens if self.first.usage is not None else self._chunks

    def reached(self, event: Event) -> bool:
        """Take one event of the first stream; True when the stream must be cut now."""
        if isinstance(event, ReasoningDelta):
            self._chunks += 1
            self._reasoning.append(event.text)
        elif isinstance(event, TextDelta):
            self._answering = True
        if self._answering or self.first.calls or self.first.finish is not None:
            return False  # the reasoning has ended by itself
        self.cut = self.spent >= self.budget
        return self.cut

    def left(self) -> int | None:
        """Output tokens the continuation may produce (None: no `max_tokens`)."""
        return None if self.max_tokens is None else self.max_tokens - self.spent

    def continuation(self, body: dict[str, Any]) -> dict[str, Any] | None:
        """The second request's body, or None when `max_tokens` has nothing left for an answer
        (then the answer ends `length`)."""
        left = self.left()
        if left is not None and left <= 0:
            self.first.finish = "length"
            return None
        out = continuation_body(body, self.dialect, "".join(self._reasoning), left)
        self.second = ChunkReader()
        return out

    @property
    def answer(self) -> ChunkReader:
        """The reader whose tool calls and finish end the answer."""
        return self.second if self.second is not None else self.first

    def usage(self) -> Usage:
        """The answer's usage (module docstring): one prompt, both requests' output."""
        if not self.cut:
            return self.first.usage or Usage(0, self.first.produced)
        reasoning = self.spent
        second = None
        if self.second is not None:
            second = self.second.usage or Usage(0, self.second.produced)
        if self.first.usage is not None:
            prompt, cached = self.first.usage.prompt_tokens, self.first.usage.cached_tokens
        else:  # estimated: the continuation's prompt is this one plus the reasoning
            prompt, cached = max((second.prompt_tokens if second else 0) - reasoning, 0), 0
        if second is None:
            return Usage(prompt, reasoning, cached, reasoning)
        return Usage(
            prompt,
            reasoning + second.completion_tokens,
            cached,
            reasoning + second.reasoning_tokens,
        )
