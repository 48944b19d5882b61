"""The seam between the pipeline's tool loop and the built-in tools.

The pipeline does, per request:

    registry = services.tools                       # build_registry(settings), once at start-up
    tools = registry.require(["codeInterpreter"])   # before generation: ToolUnavailable → refused
    ... the engine emits a ToolCall whose name is a built-in tool's `name` ...
    output = await tools[0].run(call.arguments)     # never raises for a bad call or a failed run
    # append output.content_for_model as the tool message, show output.result (+ citations)

`parameters` is the JSON Schema the call is generated under (the grammar guarantees the match;
`run` still checks, because an upstream engine guarantees nothing).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from kimiserve.domain.types import ToolCitation
from kimiserve.media.fetch import AddressPolicy, SafeFetcher
from kimiserve.settings import Settings
from kimiserve.tools.code_interpreter import SandboxLimits, probe_sandbox, run_python
from kimiserve.tools.errors import ToolFailed, ToolUnavailable
from kimiserve.tools.search import INDEX_FILE, LocalIndex, SearchBackend, SearxngBackend

MAX_QUERY_CHARS = 500
_SIGNALS = {9: "SIGKILL", 24: "SIGXCPU (the CPU time limit)", 25: "SIGXFSZ (the file size limit)"}


@dataclass(frozen=True)
class ToolOutput:
    content_for_model: str
    """The tool message appended to the conversation before the next round."""
    result: dict[str, Any]
    """What the client sees of this call (camelCase keys, as on the Runware wire)."""
    citations: tuple[ToolCitation, ...] = ()
    is_error: bool = False


class BuiltinTool(Protocol):
    name: str
    description: str
    parameters: dict[str, Any]

    def check(self) -> None:
        """Raise ToolUnavailable (parameter `tools`) when the tool cannot run on this server now."""

    async def run(self, arguments: dict[str, Any]) -> ToolOutput: ...


class CodeInterpreterTool:
    name = "codeInterpreter"
    description = (
        "Run Python 3 code in a sandbox with no network access and return its stdout, stderr and "
        "exit status. Only /tmp (the working directory) is writable and it is empty at each run; "
        "print what you need to see."
    )
    parameters: dict[str, Any] = {  # noqa: RUF012 (read-only by convention, shared by instances)
        "type": "object",
        "properties": {"code": {"type": "string", "minLength": 1, "description": "The Python program."}},
        "required": ["code"],
        "additionalProperties": False,
    }

    def __init__(self, limits: SandboxLimits) -> None:
        self.limits = limits

    def check(self) -> None:
        probe_sandbox(self.limits)

    async def run(self, arguments: dict[str, Any]) -> ToolOutput:
        code = arguments.get("code")
        if not isinstance(code, str) or not code.strip() or set(arguments) - {"code"}:
            return _error("The call needs exactly one argument, `code`, a non-empty string.")
        try:
            result = await run_python(code, self.limits)
        except ValueError as exc:
            return _error(str(exc))
        lines = [f"exit status: {_describe_status(result.exit_status)}"]
        if result.timed_out:
            lines.append(f"timed out: the run was killed after {self.limits.wall_s:g} s of wall-clock time")
        lines += ["stdout:", result.stdout or "(empty)", "stderr:", result.stderr or "(empty)"]
        if result.truncated:
            lines.append(
                f"(output cut at {self.limits.max_output_bytes} bytes per stream; the run was stopped)"
            )
        visible = {
            "stdout": result.stdout,
            "stderr": result.stderr,
            "exitStatus": result.exit_status,
            "timedOut": result.timed_out,
            "truncated": result.truncated,
        }
        return ToolOutput("\n".join(lines), visible)


class SearchTool:
    name = "search"
    description = "Search for documents and return the best matches with their titles, URLs and snippets."
    parameters: dict[str, Any] = {  # noqa: RUF012
        "type": "object",
        "properties": {
            "query": {"type": "string", "minLength": 1, "maxLength": MAX_QUERY_CHARS},
        },
        "required": ["query"],
        "additionalProperties": False,
    }

    def __init__(self, backend: SearchBackend, *, results: int = 5) -> None:
        self.backend = backend
        self.results = results

    def check(self) -> None:
        if isinstance(self.backend, LocalIndex) and not self.backend.documents():
            raise _no_search_backend()

    async def run(self, arguments: dict[str, Any]) -> ToolOutput:
        query = arguments.get("query")
        if not isinstance(query, str) or not query.strip() or len(query) > MAX_QUERY_CHARS:
            return _error(f"The call needs `query`, 1 to {MAX_QUERY_CHARS} characters.")
        try:
            hits = await self.backend.search(query, self.results)
        except ToolFailed as exc:
            return _error(str(exc))
        if hits:
            content = "\n\n".join(
                f"[{i}] {hit.title}\nURL: {hit.url}\n{hit.snippet}" for i, hit in enumerate(hits, 1)
            )
        else:
            content = f"No results for {query!r}."
        visible = {
            "query": query,
            "results": [{"title": h.title, "url": h.url, "snippet": h.snippet} for h in hits],
        }
        return ToolOutput(content, visible, tuple(ToolCitation(h.title, h.url) for h in hits))


@dataclass
class ToolRegistry:
    tools: dict[str, BuiltinTool] = field(default_factory=dict)

    def require(self, names: Iterable[str]) -> list[BuiltinTool]:
        """The tools a request asks for, each checked; ToolUnavailable names `tools` otherwise."""
        found: list[BuiltinTool] = []
        for name in names:
            tool = self.tools.get(name)
            if tool is None:
                raise ToolUnavailable(f"The built-in tool {name!r} is not available on this server.")
            tool.check()
            found.append(tool)
        return found

    async def aclose(self) -> None:
        for tool in self.tools.values():
            backend = getattr(tool, "backend", None)
            if isinstance(backend, SearxngBackend):
                await backend.aclose()


def limits_from(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        wall_s=settings.code_timeout_s,
        cpu_s=settings.code_cpu_s,
        memory_mb=settings.code_memory_mb,
        max_processes=settings.code_max_processes,
        tmpfs_mb=settings.code_tmpfs_mb,
        max_output_bytes=settings.code_max_output_bytes,
    )


def search_backend_from(settings: Settings) -> SearchBackend:
    if settings.search_url:
        fetcher = SafeFetcher(
            AddressPolicy.allowing(settings.allow_private_hosts),
            timeout_s=settings.fetch_timeout_s,
            max_bytes=settings.fetch_max_bytes,
        )
        return SearxngBackend(settings.search_url, fetcher)
    return LocalIndex(settings.data_dir / INDEX_FILE)


def build_registry(settings: Settings) -> ToolRegistry:
    """Both built-ins; whether each can run is checked per request by `require`."""
    tools: list[BuiltinTool] = [
        CodeInterpreterTool(limits_from(settings)),
        SearchTool(search_backend_from(settings), results=settings.search_results),
    ]
    return ToolRegistry({tool.name: tool for tool in tools})


def _no_search_backend() -> ToolUnavailable:
    return ToolUnavailable(
        "The search tool has no backend: set KIMISERVE_SEARCH_URL to a SearXNG instance, or add "
        "documents to the local index with `kimiserve search add PATH…`."
    )


def _describe_status(status: int | None) -> str:
    if status is None:
        return "none (killed)"
    if status < 0:
        return f"{status} (killed by {_SIGNALS.get(-status, f'signal {-status}')})"
    return str(status)


def _error(message: str) -> ToolOutput:
    return ToolOutput(f"error: {message}", {"error": message}, is_error=True)
