"""Codex CLI (`codex exec`, which speaks only the Responses API) through a real kimiserve in front
of the stand-in vLLM: a turn, and a turn where the stand-in calls Codex's shell tool
(`exec_command {"cmd": …}`, as Codex 0.169 declares it), which Codex runs and returns.

Codex's prompt (~3,000 tokens of instructions and tool schemas) is beyond the embedded model's
context, hence the stand-in. Codex's hosted web search is switched off in its config: this server
refuses built-in tools by name (a Codex left at its default gets that 400, naming `tools[N].type`).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.protocols.upstream.conftest import Front

CODEX = shutil.which("codex")
pytestmark = [
    pytest.mark.skipif(
        CODEX is None, reason="the codex binary is absent (npm install -g @openai/codex@0.169.0)"
    ),
    pytest.mark.timeout(300),
]

CONFIG = """\
model = "kimi-k2.6"
model_provider = "kimiserve"
web_search = "disabled"

[model_providers.kimiserve]
name = "kimiserve"
base_url = "{base_url}/v1"
wire_api = "responses"
env_key = "KIMISERVE_API_KEY"
"""


async def codex_exec(kimi: Front, tmp_path: Path, prompt: str) -> str:
    home = tmp_path / "codex-home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (home / "config.toml").write_text(CONFIG.format(base_url=kimi.server.base_url))
    env = {**os.environ, "CODEX_HOME": str(home), "KIMISERVE_API_KEY": kimi.key}
    assert CODEX is not None
    # As root without network: no sandbox (Codex's own needs namespaces), no approvals (exec).
    command = [CODEX, "exec", "--skip-git-repo-check", "-s", "danger-full-access", "-C", str(work), prompt]
    done = await asyncio.to_thread(
        subprocess.run,
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def test_codex_completes_a_turn(kimi: Front, tmp_path: Path) -> None:
    out = await codex_exec(kimi, tmp_path, "Say hello #notool")
    assert out.strip().splitlines()[-1] == "Say hello #notool"  # the stand-in's echo, as Codex's answer
    body = kimi.last_upstream_body()
    assert body["messages"][-1] == {"role": "user", "content": "Say hello #notool"}
    assert any(t["function"]["name"] == "exec_command" for t in body["tools"])


async def test_codex_runs_the_shell_tool_it_is_asked_to_call(kimi: Front, tmp_path: Path) -> None:
    # `$((6*7))` comes back as 42 only if Codex ran the command in a shell
    out = await codex_exec(kimi, tmp_path, 'Run it. #call:exec_command {"cmd": "echo kimi-$((6*7))"}')
    assert "tool said:" in out and "kimi-42" in out
    messages = kimi.last_upstream_body()["messages"]
    assert messages[-2]["role"] == "assistant"
    assert messages[-2]["tool_calls"][0]["function"]["name"] == "exec_command"
    assert messages[-1]["role"] == "tool" and "kimi-42" in messages[-1]["content"]
