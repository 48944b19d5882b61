"""The seam the pipeline calls: the registry from settings, `require`, and each tool's `run`."""

from __future__ import annotations

import shutil
from pathlib import Path

import jsonschema
import pytest

from kimiserve.cli.main import main
from kimiserve.settings import Settings
from kimiserve.tools import ToolUnavailable
from kimiserve.tools.builtin import CodeInterpreterTool, SearchTool, build_registry, limits_from
from kimiserve.tools.search import LocalIndex, SearxngBackend
from tests.tools.searxng_standin import standin

pytestmark = pytest.mark.timeout(30)
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed")


def settings(tmp_path: Path, **kw: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", **kw)  # type: ignore[arg-type]


def test_registry_holds_both_tools_with_valid_schemas(tmp_path: Path) -> None:
    registry = build_registry(settings(tmp_path, code_timeout_s=3.0, code_memory_mb=300))
    assert sorted(registry.tools) == ["codeInterpreter", "search"]
    for tool in registry.tools.values():
        jsonschema.Draft202012Validator.check_schema(tool.parameters)
        assert tool.description
    code_tool = registry.tools["codeInterpreter"]
    assert isinstance(code_tool, CodeInterpreterTool)
    assert (code_tool.limits.wall_s, code_tool.limits.memory_mb) == (3.0, 300)
    jsonschema.validate({"code": "print(1)"}, code_tool.parameters)
    jsonschema.validate({"query": "otters"}, registry.tools["search"].parameters)


def test_unknown_tool_is_refused_naming_tools(tmp_path: Path) -> None:
    with pytest.raises(ToolUnavailable) as info:
        build_registry(settings(tmp_path)).require(["webBrowser"])
    assert info.value.parameter == "tools" and info.value.code == "unsupportedFeature"


def test_no_bwrap_refuses_code_interpreter_before_generation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ToolUnavailable, match="bwrap") as info:
        build_registry(settings(tmp_path)).require(["codeInterpreter"])
    assert info.value.parameter == "tools" and info.value.status == 400


def test_no_search_backend_is_refused_naming_tools(tmp_path: Path) -> None:
    registry = build_registry(settings(tmp_path))
    with pytest.raises(ToolUnavailable, match="KIMISERVE_SEARCH_URL") as info:
        registry.require(["search"])
    assert info.value.parameter == "tools"


async def test_search_tool_on_the_local_index_cites_its_sources(tmp_path: Path) -> None:
    config = settings(tmp_path)
    doc = tmp_path / "otters.md"
    doc.write_text("# Sea otters\n\nA group of resting otters is called a raft.\n")
    LocalIndex(config.data_dir / "search.db").add_path(doc)
    (tool,) = build_registry(config).require(["search"])  # documents added after start-up count
    output = await tool.run({"query": "what is a group of otters called"})
    assert not output.is_error
    assert output.content_for_model.startswith(f"[1] Sea otters\nURL: {doc.resolve().as_uri()}\n")
    assert "raft" in output.content_for_model
    assert [(c.title, c.url) for c in output.citations] == [("Sea otters", doc.resolve().as_uri())]
    assert output.result["results"][0]["title"] == "Sea otters"
    nothing = await tool.run({"query": "volcanoes"})
    assert nothing.content_for_model == "No results for 'volcanoes'." and nothing.citations == ()


async def test_search_tool_on_searxng_from_settings(tmp_path: Path) -> None:
    with standin() as server:
        config = settings(tmp_path, search_url=server.url, allow_private_hosts=["127.0.0.1"])
        registry = build_registry(config)
        (tool,) = registry.require(["search"])
        assert isinstance(tool, SearchTool) and isinstance(tool.backend, SearxngBackend)
        try:
            output = await tool.run({"query": "Kimi model"})
        finally:
            await registry.aclose()
    assert [c.url for c in output.citations] == ["https://www.moonshot.ai/"]
    assert "Kimi K2.6 is a mixture-of-experts model." in output.content_for_model


async def test_search_backend_failure_is_an_error_output_not_an_exception(tmp_path: Path) -> None:
    with standin() as server:
        registry = build_registry(settings(tmp_path, search_url=server.url))  # loopback not allowed
        try:
            output = await registry.tools["search"].run({"query": "otters"})
        finally:
            await registry.aclose()
    assert output.is_error and output.content_for_model.startswith("error: The search backend did not answer")


@needs_bwrap
def test_a_sandbox_that_cannot_start_is_refused_with_bwraps_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from kimiserve.tools import code_interpreter

    real = code_interpreter.sandbox_argv
    monkeypatch.setattr(
        code_interpreter, "sandbox_argv", lambda b, lim: [b, "--no-such-flag", *real(b, lim)[1:]]
    )
    with pytest.raises(ToolUnavailable, match="--no-such-flag") as info:
        build_registry(settings(tmp_path)).require(["codeInterpreter"])
    assert info.value.parameter == "tools"
    monkeypatch.undo()
    build_registry(settings(tmp_path)).require(["codeInterpreter"])  # the real sandbox starts


@pytest.mark.parametrize("arguments", [{}, {"query": ""}, {"query": 3}, {"query": "x" * 501}])
async def test_bad_search_arguments_are_an_error_output(tmp_path: Path, arguments: dict[str, object]) -> None:
    output = await build_registry(settings(tmp_path)).tools["search"].run(arguments)
    assert output.is_error and "query" in output.content_for_model


@pytest.mark.parametrize("arguments", [{}, {"code": ""}, {"code": 1}, {"code": "1", "extra": 2}])
async def test_bad_code_arguments_are_an_error_output(tmp_path: Path, arguments: dict[str, object]) -> None:
    output = await build_registry(settings(tmp_path)).tools["codeInterpreter"].run(arguments)
    assert output.is_error and "code" in output.content_for_model


@needs_bwrap
async def test_code_interpreter_reports_output_and_status_to_the_model(tmp_path: Path) -> None:
    tool = CodeInterpreterTool(limits_from(settings(tmp_path)))
    output = await tool.run({"code": "import sys\nprint(6 * 7)\nsys.exit('bye')"})
    assert output.content_for_model == "exit status: 1\nstdout:\n42\n\nstderr:\nbye\n"
    assert output.result == {
        "stdout": "42\n",
        "stderr": "bye\n",
        "exitStatus": 1,
        "timedOut": False,
        "truncated": False,
    }


@needs_bwrap
async def test_code_interpreter_tells_the_model_about_limits(tmp_path: Path) -> None:
    tool = CodeInterpreterTool(limits_from(settings(tmp_path, code_timeout_s=1.0, code_max_output_bytes=10)))
    slept = await tool.run({"code": "import time\ntime.sleep(30)"})
    assert "timed out: the run was killed after 1 s" in slept.content_for_model
    assert slept.result["timedOut"] is True and slept.result["exitStatus"] is None
    loud = await tool.run({"code": "print('x' * 1000)"})
    assert loud.result["stdout"] == "x" * 10 and "output cut at 10 bytes" in loud.content_for_model
    spin = CodeInterpreterTool(limits_from(settings(tmp_path, code_cpu_s=1)))
    spun = await spin.run({"code": "while True:\n    pass"})
    assert "SIGXCPU (the CPU time limit)" in spun.content_for_model


def test_cli_search_add_list_query(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "otters.md"
    doc.write_text("# Sea otters\n\nA group of resting otters is called a raft.\n")
    data = str(tmp_path / "data")
    assert main(["search", "add", str(doc), "--url", "https://example.org/otters", "--data-dir", data]) == 0
    assert "Indexed https://example.org/otters ('Sea otters', 1 chunks)." in capsys.readouterr().out
    assert main(["search", "list", "--data-dir", data]) == 0
    assert "https://example.org/otters" in capsys.readouterr().out
    assert main(["search", "query", "resting otters", "--data-dir", data]) == 0
    assert capsys.readouterr().out.startswith("[1] Sea otters\n    https://example.org/otters\n")
    assert main(["search", "add", str(tmp_path / "missing.md"), "--data-dir", data]) == 1
    assert "missing.md" in capsys.readouterr().err
