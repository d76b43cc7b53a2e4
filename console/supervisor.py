"""``serve --workers N``: a small supervisor of N uvicorn worker processes on one socket.

The parent binds the listening socket once and starts each worker as ``manage.py serve
--listen-fd F --control-fd C`` with the socket inherited: every worker accepts from the same
kernel queue, so a worker that stops accepting leaves its share of the queue to the others
(with ``SO_REUSEPORT`` each worker would have a queue of its own, and the connections waiting in
a closing worker's queue would be reset). The parent serves nothing itself; it

* restarts a worker that dies (after a back-off when it dies young), counts it
  (``breakwater_process_recycles_total{role="serve",reason="died"}``), forgets its live gauges
  (``mark_process_dead``) and resolves its memory incident;
* recycles a worker that asks to be recycled over its control pipe (it reached its request
  limit, ``BREAKWATER_SERVE_MAX_REQUESTS`` plus jitter, or its RSS limit,
  ``BREAKWATER_SERVE_MAX_RSS_MB``): it starts the replacement first, waits until it accepts, and
  only then sends the old worker SIGTERM. That worker stops accepting, finishes its in-flight
  requests within uvicorn's graceful timeout, drains its journal and exits. One recycle at a
  time, so the other workers keep serving;
* on SIGTERM/SIGINT, stops every worker the same graceful way and exits 0.

Workers are fresh interpreters (not forks of the parent): nothing of the parent's state (threads,
connections, prometheus_client's value files) is shared by accident. Multiprocess metrics need
``PROMETHEUS_MULTIPROC_DIR`` before prometheus_client is imported: ``serve`` sets it (and
re-executes itself) before the supervisor starts when the operator did not.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

import uvicorn

log = logging.getLogger("breakwater.serve")

READY = "ready"
RECYCLE = "recycle"
STOP_GRACE_S = 60.0  # uvicorn's graceful 15 s, then the engine's drain; then SIGKILL
READY_TIMEOUT_S = 120.0


def bind_socket(host: str, port: int, *, backlog: int = 2048) -> socket.socket:
    """The listening socket the workers share (inheritable)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


@dataclass
class Child:
    slot: int
    process: subprocess.Popen[bytes]
    control: int  # the read end of its control pipe (non-blocking)
    started_at: float
    ready: bool = False
    retiring: str | None = None  # the recycle reason once it was told to stop
    wants_recycle: str | None = None
    buffer: bytes = b""

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Slot:
    index: int
    current: Child | None = None
    replacement: Child | None = None
    failures: int = 0
    not_before: float = 0.0
    history: list[str] = field(default_factory=list)


class Supervisor:
    """``child_args(slot, listen_fd, control_fd)``: the worker's command line."""

    def __init__(
        self,
        *,
        sock: socket.socket,
        workers: int,
        child_args: Callable[[int, int, int], Sequence[str]],
        on_exit: Callable[[int, str], None] | None = None,
        env: dict[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers: must be >= 1, got {workers}")
        self.sock = sock
        self.slots = [Slot(i) for i in range(workers)]
        self._child_args = child_args
        self._on_exit = on_exit
        self._env = env
        self._clock = clock
        self._selector = selectors.DefaultSelector()
        self._stopping = False
        self._recycling: Slot | None = None
        self._retired: list[tuple[Slot, Child]] = []  # told to stop, not reaped yet
        self.recycles: list[tuple[int, str]] = []  # (pid, reason), for logs and tests

    # --- processes ------------------------------------------------------------------------------

    def _spawn(self, slot: Slot) -> Child:
        read, write = os.pipe()
        os.set_blocking(read, False)
        listen_fd = self.sock.fileno()
        try:
            process = subprocess.Popen(  # noqa: S603 - our own command line
                list(self._child_args(slot.index, listen_fd, write)),
                pass_fds=(listen_fd, write),
                env=self._env,
            )
        finally:
            os.close(write)
        child = Child(slot.index, process, read, self._clock())
        self._selector.register(read, selectors.EVENT_READ, child)
        log.info("worker %d started (pid %d)", slot.index, child.pid)
        return child

    def _signal(self, child: Child, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(sig)

    def _read(self, child: Child) -> None:
        while True:
            try:
                data = os.read(child.control, 4096)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno == errno.EAGAIN:
                    return
                data = b""
            if not data:  # the worker closed its end (it is exiting)
                self._unregister(child)
                return
            child.buffer += data
            *lines, child.buffer = child.buffer.split(b"\n")
            for line in lines:
                self._message(child, line.decode(errors="replace").strip())

    def _message(self, child: Child, line: str) -> None:
        word, _, rest = line.partition(" ")
        if word == READY:
            child.ready = True
            log.info("worker %d ready (pid %d)", child.slot, child.pid)
        elif word == RECYCLE and child.wants_recycle is None and child.retiring is None:
            child.wants_recycle = rest or "unknown"
            log.info("worker %d (pid %d) asks to be recycled: %s", child.slot, child.pid, rest)

    def _unregister(self, child: Child) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(child.control)
        with contextlib.suppress(OSError):
            os.close(child.control)
        child.control = -1

    def _reaped(self, slot: Slot, child: Child, code: int) -> None:
        """``child`` of ``slot`` exited with ``code``."""
        if child.control >= 0:
            self._read(child)
            self._unregister(child)
        reason = child.retiring or ("stopped" if self._stopping else "died")
        if reason == "died":
            log.error("worker %d (pid %d) exited with %s; restarting", slot.index, child.pid, code)
        else:
            log.info("worker %d (pid %d) stopped (%s)", slot.index, child.pid, reason)
        if reason != "stopped":
            self.recycles.append((child.pid, reason))
        if self._on_exit is not None:
            try:
                self._on_exit(child.pid, reason)
            except Exception:
                log.exception("after worker %d exited", child.pid)

    # --- the loop -------------------------------------------------------------------------------

    def _handle_signal(self, sig: int, frame: FrameType | None) -> None:
        self._stopping = True

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle_signal)
        for slot in self.slots:
            slot.current = self._spawn(slot)
        while not self._stopping:
            self.step(timeout=0.2)
        self.stop()
        return 0

    def step(self, *, timeout: float) -> None:
        for key, _ in self._selector.select(timeout):
            self._read(key.data)
        now = self._clock()
        self.step_retired()
        for slot in self.slots:
            self._check(slot, now)
        if self._recycling is None:
            for slot in self.slots:
                current = slot.current
                if current is not None and current.wants_recycle and now >= slot.not_before:
                    self._recycling = slot
                    slot.replacement = self._spawn(slot)
                    break
        self._progress_recycle(now)

    def _check(self, slot: Slot, now: float) -> None:
        for child in (slot.current, slot.replacement):
            if child is None:
                continue
            code = child.process.poll()
            if code is None:
                continue
            self._reaped(slot, child, code)
            if child is slot.replacement:
                slot.replacement = None
                self._recycle_failed(slot, now)
            elif child is slot.current:
                slot.current = None
                if slot.replacement is None and not self._stopping:
                    young = now - child.started_at < 10
                    slot.failures = slot.failures + 1 if young else 0
                    slot.not_before = now + (min(30.0, 0.5 * 2**slot.failures) if young else 0)
        idle = slot.current is None and slot.replacement is None
        if idle and not self._stopping and now >= slot.not_before:
            slot.current = self._spawn(slot)

    def step_retired(self) -> None:
        """Reap the workers that were told to stop."""
        still = []
        for slot, child in self._retired:
            code = child.process.poll()
            if code is None:
                still.append((slot, child))
            else:
                self._reaped(slot, child, code)
        self._retired = still

    def _recycle_failed(self, slot: Slot, now: float) -> None:
        log.error(
            "the replacement of worker %d did not start; the old one keeps serving", slot.index
        )
        slot.failures += 1
        slot.not_before = now + min(60.0, 2.0 * 2**slot.failures)
        if self._recycling is slot:
            self._recycling = None

    def _progress_recycle(self, now: float) -> None:
        slot = self._recycling
        if slot is None:
            return
        new, old = slot.replacement, slot.current
        if new is None:
            self._recycling = None
            return
        if not new.ready:
            if now - new.started_at > READY_TIMEOUT_S:
                log.error("the replacement of worker %d was not ready in time", slot.index)
                self._signal(new, signal.SIGKILL)
            return
        # The replacement accepts: the old worker can go.
        slot.current, slot.replacement = new, None
        slot.failures = 0
        self._recycling = None
        if old is not None:
            old.retiring = old.wants_recycle or "unknown"
            self._signal(old, signal.SIGTERM)
            self._retired.append((slot, old))

    def stop(self) -> None:
        """Stop every worker gracefully (SIGKILL after ``STOP_GRACE_S``)."""
        self._stopping = True
        children = [c for s in self.slots for c in (s.current, s.replacement) if c is not None]
        children += [child for _, child in self._retired]
        for child in children:
            self._signal(child, signal.SIGTERM)
        deadline = self._clock() + STOP_GRACE_S
        for child in children:
            try:
                child.process.wait(timeout=max(0.1, deadline - self._clock()))
            except subprocess.TimeoutExpired:
                log.error(
                    "worker pid %d did not stop in %.0f s; killing it", child.pid, STOP_GRACE_S
                )
                self._signal(child, signal.SIGKILL)
                child.process.wait(timeout=10)
        self.step_retired()
        for slot in self.slots:
            for last in (slot.current, slot.replacement):
                if last is not None and last.process.returncode is not None:
                    self._reaped(slot, last, last.process.returncode)
            slot.current = slot.replacement = None
        self.sock.close()
        sys.stdout.flush()


# --- the worker's side --------------------------------------------------------------------------


class ControlPipe:
    """A worker's line to its supervisor: ``ready`` once it accepts, ``recycle <reason>`` once
    (the first reason wins). Thread-safe (the memory watch's thread asks for ``max_rss``)."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()
        self.recycle_asked: str | None = None

    def _send(self, line: str) -> None:
        with self._lock, contextlib.suppress(OSError):  # the supervisor is gone: we stop anyway
            os.write(self._fd, (line + "\n").encode())

    def ready(self) -> None:
        self._send(READY)

    def recycle(self, reason: str) -> None:
        with self._lock:
            if self.recycle_asked is not None:
                return
            self.recycle_asked = reason
        log.info("asking to be recycled: %s", reason)
        self._send(f"{RECYCLE} {reason}")

    def rss_check(self, limit_bytes: int) -> Callable[[int], None]:
        """The memory watch's ``on_sample``: past ``limit_bytes`` of RSS, ask to be recycled."""

        def check(rss: int) -> None:
            if rss > limit_bytes:
                self.recycle("max_rss")

        return check


class RecyclingServer(uvicorn.Server):
    """uvicorn's server, which asks its supervisor to be recycled after ``max_requests``
    requests instead of exiting (so the replacement accepts before this one stops), and stops
    if its supervisor dies. Checked on uvicorn's 0.1 s tick, not per request."""

    def __init__(
        self, config: uvicorn.Config, *, control: ControlPipe, max_requests: int = 0
    ) -> None:
        super().__init__(config)
        self.control = control
        self.max_requests = max_requests
        self._parent = os.getppid()

    async def on_tick(self, counter: int) -> bool:
        should_exit = await super().on_tick(counter)
        if (
            self.max_requests
            and self.control.recycle_asked is None
            and self.server_state.total_requests >= self.max_requests
        ):
            self.control.recycle("max_requests")
        if counter % 10 == 0 and os.getppid() != self._parent:
            log.error("the supervisor is gone; stopping")
            self.should_exit = True
        return should_exit
