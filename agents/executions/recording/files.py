"""Embedded mode: a per-process append-only journal file, and its drainer.

Each writing process appends to its own ``<dir>/<pid>-<monotonic_ns>.jsonl``; one drainer at a
time (``flock`` on ``<dir>/drain.lock``) reads every file from the byte offset kept in its
sidecar ``<file>.offset``, stores the events, and only then advances the offset. So an event is
stored at least once, and the upsert makes twice harmless.

A file is *final* when its writer is gone: the writer holds a shared ``flock`` on its file for
as long as it may append (the kernel drops it when the writer closes the file or dies), and,
as well, its pid is not alive or a newer file of the same pid exists (the writer rotated, or
the pid was reused by a later process). The lock is what keeps a second journal of the same
process (an embedded worker's engine next to serve's) from making the first one's file look
final. Liveness is decided before the file is read, so nothing a writer appends after the
check is mistaken for final.
Only in a final file is a trailing line without its newline skipped (the writer died mid-write;
logged), and only a final, fully drained file is deleted. A reused pid can only make a dead
writer look alive, which delays clean-up and never loses data. The directory must not be
shared between PID namespaces (containers): use the Redis journal there.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from agents.executions.recording.drainer import DrainResult, with_fresh_connections
from agents.executions.recording.events import Row, encode_finished, encode_started, row_from_event
from agents.executions.recording.store import store_rows
from agents.runtime.state import RecordingUnavailable
from agents.runtime.types import ExecutionRequest, ExecutionResult

log = logging.getLogger("breakwater.recording")

JOURNAL_RE = re.compile(r"^(\d+)-(\d+)\.jsonl$")
LOCK_NAME = "drain.lock"
REJECTED_NAME = "rejected.jsonl"


class FileJournal:
    """A :class:`~agents.runtime.ports.RecordSink` appending one JSON line per event.

    Each event is one ``os.write`` on an ``O_APPEND`` descriptor, so once ``started`` or
    ``finished`` returns the line is in the kernel's page cache and survives the death of this
    process, SIGKILL included. There is no fsync per event: a machine crash (power, kernel
    panic) may lose the last seconds of events still in the page cache; a process crash does
    not. A write costs a few microseconds and does not block the event loop noticeably.

    The file rotates after ``max_bytes``; a forked child opens a file of its own. A short or
    failed write (disk full) raises, and the next event goes to a fresh file, so a torn line is
    never followed by another event in the same file.
    """

    def __init__(
        self, directory: Path, *, max_bytes: int = 64 * 1024 * 1024, owner: str = ""
    ) -> None:
        self.owner = owner  # the process identity written on "started" events
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._fd = -1
        self._pid = 0
        self._size = 0
        self.path: Path | None = None
        self._open()

    def _open(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = -1
        pid = os.getpid()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        while True:
            path = self.directory / f"{pid}-{time.monotonic_ns()}.jsonl"
            try:
                self._fd = os.open(path, flags, 0o600)
            except FileExistsError:
                continue
            break
        fcntl.flock(self._fd, fcntl.LOCK_SH)  # "a writer has it open": see the module doc
        self._pid, self._size, self.path = pid, 0, path

    def append(self, line: bytes) -> None:
        """Write one event line (``line`` must end with ``\\n``) in a single ``os.write``."""
        with self._lock:
            if self._fd < 0 or self._pid != os.getpid() or self._size >= self._max_bytes:
                self._open()
            try:
                written = os.write(self._fd, line)
            except OSError:
                self._fd_failed()
                raise
            self._size += written
            if written != len(line):
                self._fd_failed()
                raise OSError(errno.ENOSPC, f"short write to {self.path}: {written}/{len(line)}")

    def _fd_failed(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self._fd = -1  # the next append opens a new file

    async def started(
        self,
        request: ExecutionRequest,
        created_at: float,
        *,
        reserved_micros: int = 0,
        budget_keys: tuple[str, ...] = (),
    ) -> None:
        line = encode_started(
            request, created_at, owner=self.owner, reserved_micros=reserved_micros
        )
        try:
            self.append(line + b"\n")
        except OSError as exc:  # a full disk: nothing goes upstream that is not recorded
            raise RecordingUnavailable(f"journal {self.path}: {exc}") from exc

    async def finished(self, result: ExecutionResult) -> None:
        self.append(encode_finished(result) + b"\n")

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


def pid_alive(pid: int) -> bool:
    """False only when ``pid`` certainly runs no process (gone, or a zombie)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


@dataclass
class _File:
    path: Path
    pid: int
    ns: int
    final: bool = False
    start: int = 0  # offset before this drain
    offset: int = 0  # offset after this drain
    size: int = 0

    @property
    def sidecar(self) -> Path:
        return self.path.with_name(self.path.name + ".offset")


def _journals(directory: Path) -> list[_File]:
    files = []
    for entry in os.scandir(directory):
        match = JOURNAL_RE.match(entry.name)
        if match:
            files.append(_File(Path(entry.path), int(match[1]), int(match[2])))
    files.sort(key=lambda f: (f.ns, f.pid))
    newest: dict[int, int] = {}
    for f in files:
        newest[f.pid] = max(newest.get(f.pid, 0), f.ns)
    for f in files:
        f.final = (f.ns < newest[f.pid] or not pid_alive(f.pid)) and not _writer_holds(f.path)
    return files


def _writer_holds(path: Path) -> bool:
    """True while a FileJournal has ``path`` open (its shared lock conflicts with ours)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (releases ours, if we got it)
    return False


def _read_offset(f: _File) -> int:
    try:
        text = f.sidecar.read_text()
    except FileNotFoundError:
        return 0
    try:
        return int(text)
    except ValueError:  # torn by a machine crash: start over, the upsert makes it harmless
        log.warning("journal offset %s unreadable (%r); re-reading the file", f.sidecar, text)
        return 0


def _write_offset(f: _File) -> None:
    tmp = f.sidecar.with_name(f.sidecar.name + ".tmp")
    tmp.write_text(str(f.offset))
    os.replace(tmp, f.sidecar)


def _set_aside(directory: Path, entries: list[dict[str, object]]) -> None:
    data = b"".join(json.dumps(e, default=str).encode("ascii") + b"\n" for e in entries)
    fd = os.open(directory / REJECTED_NAME, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def drain_files_once(directory: Path, *, batch_size: int = 1000) -> DrainResult:
    """Store up to ``batch_size`` events from the journal files, then advance their offsets.

    Synchronous and does database work: call it from a thread in async code (see
    :func:`file_drain`). Returns at once with ``locked=True`` if another drainer holds the lock.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return DrainResult(locked=True)
        return _drain_locked(directory, batch_size)
    finally:
        os.close(lock_fd)  # releases the lock


def _drain_locked(directory: Path, batch_size: int) -> DrainResult:
    files = _journals(directory)
    rows: list[tuple[int, Row]] = []
    sources: list[tuple[_File, int, bytes]] = []  # per event: file, offset, line
    bad: list[tuple[int, str]] = []
    full = False
    touched: list[_File] = []
    for f in files:
        if len(sources) >= batch_size:
            full = True
            break
        f.start = f.offset = _read_offset(f)
        try:
            fh = open(f.path, "rb")  # noqa: SIM115 - closed by the with below
        except FileNotFoundError:  # removed by hand since the listing
            continue
        with fh:
            f.size = os.fstat(fh.fileno()).st_size
            if f.offset > f.size:
                log.warning("journal offset beyond the end of %s; re-reading it", f.path)
                f.start = f.offset = 0
            fh.seek(f.offset)
            while len(sources) < batch_size:
                line = fh.readline()
                if not line:
                    break
                if not line.endswith(b"\n"):
                    if f.final:  # its writer died mid-write: this line will never complete
                        log.warning(
                            "skipping %d-byte torn line at the end of %s", len(line), f.path
                        )
                        f.offset += len(line)
                    break
                index = len(sources)
                sources.append((f, f.offset, line))
                f.offset += len(line)
                try:
                    rows.append((index, row_from_event(line)))
                except (ValueError, KeyError, TypeError, ArithmeticError) as exc:
                    bad.append((index, repr(exc)))
            else:
                full = True
            f.size = max(f.size, fh.tell())
        touched.append(f)
    outcome = store_rows(rows)
    rejected = sorted(bad + outcome.rejected)
    if rejected:
        for index, reason in rejected:
            log.error("journal event set aside (%s:%d): %s", *sources[index][:2], reason)
        _set_aside(
            directory,
            [
                {
                    "file": sources[i][0].path.name,
                    "offset": sources[i][1],
                    "error": reason,
                    "line": sources[i][2].decode("ascii", "replace").rstrip("\n"),
                }
                for i, reason in rejected
            ],
        )
    for f in touched:
        if f.offset != f.start:
            _write_offset(f)
        if f.final and f.offset >= f.size:
            f.path.unlink(missing_ok=True)
            f.sidecar.unlink(missing_ok=True)
    _remove_orphan_sidecars(directory)
    return DrainResult(events=len(sources), rows=outcome.rows, rejected=len(rejected), full=full)


def _remove_orphan_sidecars(directory: Path) -> None:
    for entry in os.scandir(directory):
        name, sep, _ = entry.name.partition(".jsonl.offset")
        if sep and JOURNAL_RE.match(name + ".jsonl") and not (directory / f"{name}.jsonl").exists():
            Path(entry.path).unlink(missing_ok=True)


def file_drain(directory: Path, *, batch_size: int = 1000) -> Callable[[], Awaitable[DrainResult]]:
    """:func:`drain_files_once` for :class:`RecordDrainer`: in a thread, fresh DB connections."""

    async def drain() -> DrainResult:
        return await asyncio.to_thread(
            with_fresh_connections, drain_files_once, directory, batch_size=batch_size
        )

    return drain


def journal_oldest_at(directory: Path) -> float | None:
    """When the oldest event not yet stored was written (epoch seconds), None when every event
    is stored: per journal file, the first complete line past its drained offset. An event's
    time is its ``finished_at`` (a ``finished`` event) or ``created_at`` (a ``started`` one),
    which is when the writer appended it, give or take the write itself. Reads one line per
    file with something left; no lock (a drain running meanwhile only makes it older)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    oldest: float | None = None
    for entry in os.scandir(directory):
        if not JOURNAL_RE.match(entry.name):
            continue
        f = _File(Path(entry.path), 0, 0)
        offset = _read_offset(f)
        try:
            with open(f.path, "rb") as fh:
                if offset >= os.fstat(fh.fileno()).st_size:
                    continue
                fh.seek(offset)
                line = fh.readline()
        except FileNotFoundError:  # drained and deleted since the listing
            continue
        if not line.endswith(b"\n"):
            continue  # being written (or torn): nothing complete past the offset yet
        try:
            event = json.loads(line)
            at = float(event.get("finished_at") or event["created_at"])
        except (ValueError, KeyError, TypeError, AttributeError):
            at = entry.stat().st_mtime  # unreadable: the drainer sets it aside; still waiting
        oldest = at if oldest is None else min(oldest, at)
    return oldest
