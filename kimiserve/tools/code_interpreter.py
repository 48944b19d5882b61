"""Run model-written Python in a bubblewrap sandbox, never outside one.

The sandbox (`bwrap`, Debian package `bubblewrap`):
- every namespace unshared (`--unshare-all`): no network at all (its own empty loopback), its own
  PID namespace (a fresh `/proc` that shows only the sandbox), IPC, UTS and a user namespace in
  which the process holds no capability and may not create further user namespaces;
- a root that is read-only: `/usr` bound read-only, `/bin`, `/lib*`, `/sbin` as on the host
  (symlinks into `/usr` on merged-usr systems, read-only binds otherwise), a fresh `/dev`; no
  `/etc`, `/home`, `/root`, no data directory, no host `/proc`;
- one writable place, a fresh size-capped tmpfs at `/tmp`, which is also the cwd and `HOME`;
- an empty environment: bwrap itself is started with an empty environment (the sandbox's PID 1 is
  bwrap, and `/proc/1/environ` would otherwise show the server's environment) and `--clearenv`;
- `--die-with-parent` and `--new-session` (no terminal to inject keystrokes into);
- rlimits set by `/usr/bin/prlimit` inside the sandbox just before Python starts: CPU seconds,
  address space, processes, file size, open files, no core dumps. The process limit is counted
  in the sandbox's own user namespace, so it bounds a fork bomb without counting the server's
  threads;
- when the server runs as root, the sandbox runs as an unprivileged uid (`nobody` by default),
  because the kernel does not apply the process limit to root.

The wall-clock limit kills bwrap; its PID-1 child dies with it (`--die-with-parent`) and with
that the kernel kills everything else in the PID namespace. Output is read up to a byte cap per
stream; past the cap the run is killed and reported as truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kimiserve.tools.errors import ToolUnavailable

PYTHON = "/usr/bin/python3"
PRLIMIT = "/usr/bin/prlimit"
MAX_CODE_BYTES = 1024 * 1024
_CHUNK = 65536


@dataclass(frozen=True)
class SandboxLimits:
    wall_s: float = 15.0
    cpu_s: int = 10
    memory_mb: int = 512
    max_processes: int = 32
    max_file_mb: int = 16
    tmpfs_mb: int = 64
    max_open_files: int = 64
    max_output_bytes: int = 64 * 1024
    run_as_uid: int = 65534
    """The uid the sandbox runs as when the server is root (ignored otherwise)."""


@dataclass(frozen=True)
class CodeResult:
    stdout: str
    stderr: str
    exit_status: int | None
    """Python's exit status; a negative number -N means killed by signal N; None after a timeout."""
    timed_out: bool
    truncated: bool
    wall_s: float


def find_bwrap() -> str:
    """The bwrap binary, or ToolUnavailable naming `tools` (the code is never run without it)."""
    path = shutil.which("bwrap")
    if path is None:
        raise ToolUnavailable(
            "The codeInterpreter tool needs bubblewrap (`bwrap`), which is not installed on this "
            "server; code is never run without a sandbox."
        )
    for needed in (PYTHON, PRLIMIT):
        if not os.access(needed, os.X_OK):
            raise ToolUnavailable(f"The codeInterpreter tool needs {needed}, which this server lacks.")
    return path


_probed: dict[tuple[str, ...], str | None] = {}


def probe_sandbox(limits: SandboxLimits) -> None:
    """Start one trivial sandbox (once per process and set of limits) and raise ToolUnavailable
    with bwrap's own words when it cannot start, e.g. where user namespaces are disabled."""
    argv = tuple(sandbox_argv(find_bwrap(), limits))
    if argv not in _probed:
        try:
            done = subprocess.run(
                argv,
                input=b"print('ok')",
                capture_output=True,
                env={},
                cwd="/",
                timeout=30,
                check=False,
                **_unprivileged(limits),
            )
            ok = done.returncode == 0 and done.stdout == b"ok\n"
            _probed[argv] = None if ok else done.stderr.decode(errors="replace").strip()[:500]
        except (OSError, subprocess.TimeoutExpired) as exc:
            _probed[argv] = str(exc)
    failure = _probed[argv]
    if failure is not None:
        raise ToolUnavailable(f"The codeInterpreter sandbox cannot start on this server: {failure}")


def _system_dirs() -> list[str]:
    args: list[str] = ["--ro-bind", "/usr", "/usr"]
    for name in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        path = Path(name)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            args += ["--ro-bind", name, name]
    return args


def sandbox_argv(bwrap: str, limits: SandboxLimits) -> list[str]:
    """The full command line: bwrap, then prlimit inside it, then Python reading code from stdin."""
    memory = limits.memory_mb * 1024 * 1024
    return [
        bwrap,
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--cap-drop",
        "ALL",
        "--hostname",
        "sandbox",
        *_system_dirs(),
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        str(limits.tmpfs_mb * 1024 * 1024),
        "--tmpfs",
        "/tmp",
        "--remount-ro",
        "/dev",
        "--remount-ro",
        "/",
        "--chdir",
        "/tmp",
        "--setenv",
        "HOME",
        "/tmp",
        "--setenv",
        "PATH",
        "/usr/bin:/bin",
        "--setenv",
        "LANG",
        "C.UTF-8",
        "--",
        PRLIMIT,
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 1}",
        f"--as={memory}",
        f"--nproc={limits.max_processes}",
        f"--fsize={limits.max_file_mb * 1024 * 1024}",
        f"--nofile={limits.max_open_files}",
        "--core=0",
        "--",
        PYTHON,
        "-I",
        "-",
    ]


async def run_python(code: str, limits: SandboxLimits) -> CodeResult:
    """Run `code` in a fresh sandbox; every limit is reported in the result, never raised."""
    source = code.encode()
    if len(source) > MAX_CODE_BYTES:
        raise ValueError(f"The code is over {MAX_CODE_BYTES} bytes.")
    argv = sandbox_argv(find_bwrap(), limits)
    started = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={},
        cwd="/",
        start_new_session=True,
        **_unprivileged(limits),
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    over_cap = asyncio.Event()
    readers = [
        asyncio.ensure_future(_read_capped(stream, limits.max_output_bytes, over_cap))
        for stream in (proc.stdout, proc.stderr)
    ]
    timed_out = False
    try:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            proc.stdin.write(source)
            await proc.stdin.drain()
            proc.stdin.close()
        waiter = asyncio.ensure_future(proc.wait())
        cap_hit = asyncio.ensure_future(over_cap.wait())
        done, _ = await asyncio.wait({waiter, cap_hit}, timeout=limits.wall_s, return_when="FIRST_COMPLETED")
        cap_hit.cancel()
        if not done:
            timed_out = True
        if waiter not in done:
            _kill(proc)
        await waiter
        (out, out_cut), (err, err_cut) = await asyncio.gather(*readers)
    finally:
        if proc.returncode is None:
            _kill(proc)
            await proc.wait()
        for reader in readers:
            reader.cancel()
    truncated = out_cut or err_cut
    return CodeResult(
        stdout=out.decode(errors="replace"),
        stderr=err.decode(errors="replace"),
        exit_status=None if timed_out else _exit_status(proc.returncode, truncated),
        timed_out=timed_out,
        truncated=truncated,
        wall_s=time.monotonic() - started,
    )


def _unprivileged(limits: SandboxLimits) -> dict[str, Any]:
    """As root, the sandbox runs as `run_as_uid`: dropped in the child before exec, by
    `preexec_fn` (uvloop, the server's event loop, refuses `user`/`group`/`extra_groups`)."""
    if os.geteuid() != 0:
        return {}
    uid = limits.run_as_uid

    def drop() -> None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)

    return {"preexec_fn": drop}


def _exit_status(returncode: int | None, truncated: bool) -> int | None:
    if returncode is None:
        return None
    if truncated and returncode < 0:
        return None  # we killed it for its output; its own status was never reached
    # bwrap reports a child killed by signal N as 128 + N; Python's convention is -N.
    if returncode > 128:
        return -(returncode - 128)
    return returncode


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL bwrap's process group; the PID namespace dies with its init."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def _read_capped(stream: asyncio.StreamReader, cap: int, over_cap: asyncio.Event) -> tuple[bytes, bool]:
    """Up to `cap` bytes of a stream, and whether there was more (which sets `over_cap`). Past
    the cap the stream is drained and dropped until EOF, so the pipe closes when the run is killed."""
    data = bytearray()
    cut = False
    while chunk := await stream.read(_CHUNK):
        if cut:
            continue
        data += chunk
        if len(data) > cap:
            del data[cap:]
            cut = True
            over_cap.set()
    return bytes(data), cut
