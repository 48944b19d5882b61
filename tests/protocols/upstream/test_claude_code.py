"""Claude Code (`claude -p`, installed by .ci/run) through kimiserve's Messages API, in front of
the stand-in vLLM: a plain turn, and a turn where the model calls Claude Code's own `Bash` tool,
which Claude Code runs and returns. Skipped only when the `claude` binary is absent."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.protocols.upstream.conftest import Front

CLAUDE = shutil.which("claude")
pytestmark = pytest.mark.skipif(CLAUDE is None, reason="Claude Code (claude) is not installed")


def claude(kimi: Front, home: Path, prompt: str, *flags: str) -> dict[str, Any]:
    assert CLAUDE is not None
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": kimi.server.base_url,
        "ANTHROPIC_API_KEY": kimi.key,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }
    done = subprocess.run(
        [CLAUDE, "-p", prompt, "--output-format", "json", *flags],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-2000:])
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def sent_to_messages(kimi: Front) -> list[dict[str, Any]]:
    return [b for b in kimi.standin.stats()["requests"] if b.get("tools")]


def test_claude_code_completes_a_turn(kimi: Front, tmp_path: Path) -> None:
    result = claude(kimi, tmp_path, "Say hello to kimiserve #notool")
    assert result["is_error"] is False, result
    assert "hello to kimiserve" in result["result"]
    [turn] = [b for b in sent_to_messages(kimi) if "hello to kimiserve" in json.dumps(b["messages"])][-1:]
    names = {t["function"]["name"] for t in turn["tools"]}
    assert "Bash" in names, sorted(names)  # Claude Code's own tools reach the upstream


def test_claude_code_runs_the_bash_call_the_model_makes(kimi: Front, tmp_path: Path) -> None:
    prompt = 'Run it: #agent-call-Bash {"command": "echo ran-by-$((40+2))", "description": "echo"}'
    # --allowedTools, not --dangerously-skip-permissions (which Claude Code refuses as root).
    result = claude(kimi, tmp_path, prompt, "--allowedTools", "Bash")
    assert result["is_error"] is False, result
    assert "ran-by-42" in result["result"]  # the command's output, echoed back by the model
    [after] = [
        b
        for b in kimi.standin.stats()["requests"]
        if b["messages"][-1].get("role") == "tool" and "ran-by-42" in json.dumps(b["messages"][-1])
    ][-1:]
    assert after["messages"][-2]["tool_calls"][0]["function"]["name"] == "Bash"
