"""The sandbox escape suite: each attack runs in the real bwrap sandbox and must be contained."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from kimiserve.tools import ToolUnavailable
from kimiserve.tools.code_interpreter import SandboxLimits, run_python

pytestmark = [
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap (bwrap) is not installed"),
    pytest.mark.timeout(30),
]

LIMITS = SandboxLimits(wall_s=5.0, cpu_s=3, memory_mb=256, max_processes=16, max_output_bytes=32 * 1024)


def _left_over() -> list[str]:
    """Sandboxed processes still alive (none may outlive a run): the command line of the sandboxed
    Python (its forks keep it) and of bwrap itself."""
    found = []
    for pattern in (r"^/usr/bin/python3 -I -$", r"bwrap --unshare-all --unshare-user"):
        ps = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True, check=False)
        found += ps.stdout.split()
    return found


async def test_plain_run_reports_stdout_stderr_and_status() -> None:
    result = await run_python("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)", LIMITS)
    assert (result.stdout, result.stderr, result.exit_status) == ("out\n", "err\n", 3)
    assert not result.timed_out and not result.truncated


async def test_network_cannot_reach_a_loopback_port_of_the_host() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        code += "print('CONNECTED')"
        result = await run_python(code, LIMITS)
    assert "CONNECTED" not in result.stdout
    assert result.exit_status == 1
    assert "ConnectionRefusedError" in result.stderr or "OSError" in result.stderr


async def test_no_network_interface_but_loopback() -> None:
    result = await run_python("import socket\nprint(socket.if_nameindex())", LIMITS)
    assert result.stdout.strip() == "[(1, 'lo')]"


async def test_etc_shadow_is_not_there() -> None:
    result = await run_python("print(open('/etc/shadow').read())", LIMITS)
    assert result.exit_status == 1 and "FileNotFoundError" in result.stderr


async def test_the_data_directory_is_not_there(tmp_path: Path) -> None:
    data_dir = tmp_path / "kimiserve-data"
    data_dir.mkdir()
    (data_dir / "kimiserve.db").write_text("SECRET-DATA")
    code = f"import os\nprint(os.path.exists({str(data_dir)!r}), os.listdir('/'))"
    result = await run_python(code, LIMITS)
    assert result.exit_status == 0
    assert result.stdout.startswith("False ")
    visible = set(eval(result.stdout.split(" ", 1)[1]))
    assert visible <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32", "proc", "dev", "tmp"}


async def test_proc_1_environ_and_the_environment_hold_no_server_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KIMISERVE_SECRET_FOR_TEST", "hunter2")
    code = (
        "import os\n"
        "print(open('/proc/1/environ', 'rb').read())\n"
        "print(dict(os.environ))\n"
        "print(sorted(p for p in os.listdir('/proc') if p.isdigit()))"
    )
    result = await run_python(code, LIMITS)
    assert result.exit_status == 0, result.stderr
    assert "hunter2" not in result.stdout and "KIMISERVE" not in result.stdout
    # Only the sandbox's own processes are visible: bwrap's init and Python.
    assert result.stdout.splitlines()[-1] == "['1', '2']"


async def test_fork_bomb_is_bounded_and_nothing_outlives_the_run() -> None:
    code = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(60)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "except OSError as exc:\n"
        "    print(n, exc.errno)\n"
    )
    result = await run_python(code, LIMITS)
    forks, errno = result.stdout.split()
    assert int(forks) < LIMITS.max_processes and errno == "11"  # EAGAIN
    assert result.exit_status == 0 and not result.timed_out
    assert _left_over() == []


async def test_memory_bomb_gets_memory_error() -> None:
    result = await run_python("a = []\nwhile True:\n    a.append(bytearray(10**7))", LIMITS)
    assert result.exit_status == 1 and "MemoryError" in result.stderr


async def test_infinite_loop_stops_at_the_cpu_limit() -> None:
    result = await run_python("while True:\n    pass", LIMITS)
    assert result.exit_status == -24  # SIGXCPU
    assert not result.timed_out


async def test_sleeping_forever_stops_at_the_wall_clock_limit() -> None:
    limits = SandboxLimits(wall_s=1.5)
    result = await run_python("import time\ntime.sleep(600)", limits)
    assert result.timed_out and result.exit_status is None
    assert result.wall_s < 3
    assert _left_over() == []


async def test_100_mb_of_output_is_truncated_at_the_cap() -> None:
    code = "import sys\nfor _ in range(1600):\n    sys.stdout.write('x' * 65536)\nprint('END')"
    result = await run_python(code, LIMITS)
    assert result.truncated
    assert len(result.stdout) == LIMITS.max_output_bytes
    assert result.wall_s < 3


async def test_writing_outside_the_tmpfs_fails_and_inside_works() -> None:
    code = (
        "import os\n"
        "for path in ['/x', '/usr/x', '/dev/x', '/dev/shm/x', '/proc/x', '/bin/x']:\n"
        "    try:\n"
        "        open(path, 'w').write('a')\n"
        "        print('WROTE', path)\n"
        "    except OSError as exc:\n"
        "        print('refused', path, exc.errno)\n"
        "open('/tmp/ok', 'w').write('a')\n"
        "print('cwd', os.getcwd())\n"
    )
    result = await run_python(code, LIMITS)
    assert "WROTE" not in result.stdout
    assert result.stdout.count("refused") == 6
    assert result.stdout.strip().endswith("cwd /tmp")


async def test_filling_the_tmpfs_stops_at_its_size() -> None:
    code = "open('big', 'wb').write(b'x' * (200 * 1024 * 1024))"
    result = await run_python(code, SandboxLimits(memory_mb=512, tmpfs_mb=8))
    assert result.exit_status != 0


async def test_each_run_gets_a_fresh_tmpfs() -> None:
    await run_python("open('/tmp/left-behind', 'w').write('a')", LIMITS)
    result = await run_python("import os\nprint(os.listdir('/tmp'))", LIMITS)
    assert result.stdout.strip() == "[]"


async def test_killing_the_parent_does_not_touch_the_server() -> None:
    code = "import os\nos.kill(os.getppid(), 9)\nprint('still here', os.getppid())"
    result = await run_python(code, LIMITS)
    # The parent is the sandbox's own PID 1 (bwrap's init), which ignores signals from inside.
    assert result.stdout.strip() == "still here 1"
    os.kill(os.getpid(), 0)  # and this test process is alive


async def test_killing_every_pid_reaches_nothing_outside() -> None:
    result = await run_python("import os\nos.kill(-1, 9)\nprint('done')", LIMITS)
    assert result.exit_status is not None
    os.kill(os.getpid(), 0)


async def test_no_bwrap_is_a_clear_refusal_naming_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ToolUnavailable) as info:
        await run_python("print(1)", LIMITS)
    assert info.value.parameter == "tools" and "bwrap" in info.value.message
