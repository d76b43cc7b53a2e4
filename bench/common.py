"""Helpers shared by the HTTP benchmarks (``bench/servers.py``, ``bench/gateways.py``).

Free ports, processes in their own group (started, waited for, killed), ``wrk`` runs and their
parsing, and the CPU time and memory of a process or a process tree read from ``/proc``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
WRK = shutil.which("wrk") or "/usr/bin/wrk"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def provenance(paths: tuple[str, ...]) -> str:
    """The commit measured, and the files under ``paths`` that differ from it (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "--no-optional-locks", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        status = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--", *paths],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.splitlines()
    except (OSError, subprocess.CalledProcessError):
        return "commit unknown (not a git checkout)"
    changed = [line[3:] for line in status if line.strip()]
    return f"commit {head}" + (f", uncommitted changes in {', '.join(changed)}" if changed else "")


def kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a bounded wait.

    The process must have been started with ``start_new_session=True`` (its pid is its group).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=STOP_TIMEOUT_S)
    # The leader may be gone while a child still holds the group: sweep it regardless.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT_S)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def wait_ready(
    proc: subprocess.Popen[bytes],
    url: str,
    log_path: Path,
    *,
    timeout_s: float = START_TIMEOUT_S,
    ready: Callable[[int], bool] = lambda status: status == 200,
) -> None:
    """Poll ``url`` until it answers with a status ``ready`` accepts; fail with the log's tail
    if the process exits first or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{_tail(log_path)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if ready(resp.status):
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server not ready after {timeout_s:g} s ({url}):\n{_tail(log_path)}")


# --- wrk ---------------------------------------------------------------------------------------


def wrk(
    url: str,
    *,
    threads: int,
    conns: int,
    seconds: float,
    script: Path | None = None,
    script_args: tuple[str, ...] = (),
) -> str:
    """Run ``wrk --latency`` (5 s request timeout) and return its output."""
    argv = [WRK, f"-t{threads}", f"-c{conns}", f"-d{max(1, round(seconds))}s", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    argv += ["--latency", url]
    if script_args:
        argv += ["--", *script_args]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30, check=True)
    if done.stderr.strip():  # e.g. a Lua error: wrk reports it and goes on with plain GETs
        raise RuntimeError(f"wrk: {done.stderr.strip()[:2000]}")
    return done.stdout


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def wrk_ms(text: str) -> float:
    """A wrk duration (``512.00us``, ``1.23ms``, ``2.00s``) in milliseconds."""
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise ValueError(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class WrkResult:
    p50_ms: float
    p99_ms: float
    rps: float
    requests: int  # completed responses, whatever their status
    non_2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        return self.non_2xx + self.socket_errors


def parse_wrk(out: str) -> WrkResult:
    """The figures of one ``wrk --latency`` output."""

    def find(pattern: str) -> str:
        match = re.search(pattern, out, re.M)
        if match is None:
            raise ValueError(f"wrk output has no {pattern!r}:\n{out}")
        return match.group(1)

    non_2xx = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        non_2xx = int(m.group(1))
    socket_errors = 0
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        socket_errors = sum(int(g) for g in m.groups())
    return WrkResult(
        p50_ms=wrk_ms(find(r"^\s+50%\s+(\S+)")),
        p99_ms=wrk_ms(find(r"^\s+99%\s+(\S+)")),
        rps=float(find(r"^Requests/sec:\s+([\d.]+)")),
        requests=int(find(r"^\s+(\d+) requests in")),
        non_2xx=non_2xx,
        socket_errors=socket_errors,
    )


def ensure_wrk(*, timeout_s: float = 300.0) -> str | None:
    """Install wrk with apt-get when it is missing and we are root. Returns why it is still
    missing, or None when it is there."""
    global WRK
    if Path(WRK).exists():
        return None
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return "wrk is not installed (apt-get install wrk, as root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    # Try the install alone first; on stale package lists, update them and try again.
    for steps in (["install"], ["update", "install"]):
        for step in steps:
            argv = ["apt-get", step, "-q"] + (["-y", "wrk"] if step == "install" else [])
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                subprocess.run(argv, env=env, capture_output=True, timeout=timeout_s, check=False)
        WRK = shutil.which("wrk") or WRK
        if Path(WRK).exists():
            return None
    return "wrk is not installed and apt-get could not install it"


# --- CPU and memory from /proc -------------------------------------------------------------------

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name (field 2) may contain spaces and parentheses: split after the last ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of the process, all its threads (``/proc/PID/stat``)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def tree_pids(root: int) -> list[int]:
    """``root`` and all its live descendants."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int(_stat_fields(int(entry.name))[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of a process tree: each live process's own time plus the time
    of the children it has reaped (so a helper that exits mid-window is still counted)."""
    total = 0.0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = _stat_fields(pid)
            total += sum(int(fields[i]) for i in (11, 12, 13, 14)) * _TICK_S
    return total


def tree_rss_mib(root: int) -> float:
    """Sum of the RSS of a process tree (pages shared between its processes count once each)."""
    total = 0.0
    for pid in tree_pids(root):
        with contextlib.suppress(OSError, RuntimeError):
            total += rss_mib(pid)
    return total
