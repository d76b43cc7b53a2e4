"""The scale test's deployment: :class:`bench.chaos.stack.Stack`'s processes, several of each.

Three ``serve`` processes on ports of their own behind :mod:`bench.scale.proxy` (its port is the
stack's ``port``, so every observer of :mod:`bench.chaos.observe` goes through it, as a client
would), two Celery workers each consuming its own queues, beat on its own (one replica, as the
manifests run it), and one ``drain_records``. Every process is started with
:func:`bench.chaos.stack.spawn` (its own process group, stopped whatever happens) and killed
with :func:`bench.chaos.stack.signal_group`.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import common
from bench.chaos.stack import (
    PYTHON,
    START_TIMEOUT_S,
    Database,
    FakeLLM,
    HarnessError,
    PrivateRedis,
    Stack,
    postgres_base,
    signal_group,
    spawn,
    stop,
)
from bench.common import HOST, free_port


@dataclass
class Worker:
    name: str
    queues: tuple[str, ...]
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0


@dataclass
class Serve:
    index: int
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    log: Path = field(default_factory=Path)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


class ScaleStack(Stack):
    """``serves`` x ``serve``, the proxy, one worker per entry of ``workers`` (name -> queues),
    beat and the drainer, in distributed mode."""

    def __init__(
        self,
        *,
        tmp: Path,
        config: str,
        db: Database,
        redis: PrivateRedis,
        serves: int,
        workers: Mapping[str, Sequence[str]],
        concurrency: int,
        env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(tmp=tmp, mode="distributed", config=config, db=db, redis=redis, env=env)
        self.serves = [Serve(i + 1, free_port()) for i in range(serves)]
        self.workers = [Worker(name, tuple(queues)) for name, queues in workers.items()]
        self.concurrency = concurrency
        self.beat: subprocess.Popen[bytes] | None = None
        self.proxy: subprocess.Popen[bytes] | None = None
        self.phases: dict[str, float] = {}  # set-up step -> seconds it took

    # --- starting ----------------------------------------------------------------------------

    def start(self) -> None:
        self.spawn_all()
        self.wait_all()

    def spawn_all(self) -> None:
        """Every process at once, without waiting (each start takes seconds on a loaded
        machine): the drainer, beat, the workers, the serves and the proxy."""
        self.drainer = spawn(
            [PYTHON, "manage.py", "drain_records"], log=self.tmp / "drainer.log", env=self.env()
        )
        argv = [PYTHON, "-m", "celery", "-A", "console", "beat", "-l", "WARNING"]
        argv += ["--schedule", str(self.tmp / "beat-schedule")]
        self.beat = spawn(argv, log=self.tmp / "beat.log", env=self.env())
        for worker in self.workers:
            self.spawn_worker(worker)
        for serve in self.serves:
            self.spawn_serve(serve)
        argv = [PYTHON, "-m", "bench.scale.proxy", "--host", HOST, "--port", str(self.port)]
        for serve in self.serves:
            argv += ["--backend", f"{HOST}:{serve.port}"]
        self.proxy = spawn(argv, log=self.tmp / "proxy.log", env=self.env())
        self.serve_proc = self.serves[0].proc  # what Stack's own helpers look at

    def wait_all(self) -> None:
        """Until every ``serve`` is ready and answers through the proxy."""
        for serve in self.serves:
            self.wait_serve(serve)
        assert self.proxy is not None
        common.wait_ready(
            self.proxy, f"{self.url}/readyz", self.tmp / "proxy.log", timeout_s=START_TIMEOUT_S
        )

    def spawn_serve(self, serve: Serve) -> None:
        serve.starts += 1
        serve.log = self.tmp / f"serve-{serve.index}.{serve.starts}.log"
        argv = [PYTHON, "manage.py", "serve", "--host", HOST, "--port", str(serve.port)]
        serve.proc = spawn(argv, log=serve.log, env=self.env())

    def wait_serve(self, serve: Serve) -> None:
        assert serve.proc is not None
        try:
            common.wait_ready(
                serve.proc, f"{serve.url}/readyz", serve.log, timeout_s=START_TIMEOUT_S * 2
            )
        except RuntimeError as exc:
            raise HarnessError(f"serve {serve.index}: {exc}") from exc

    def spawn_worker(self, worker: Worker) -> None:
        worker.starts += 1
        argv = [PYTHON, "-m", "celery", "-A", "console", "worker", "-l", "WARNING"]
        argv += ["-n", f"{worker.name}@scale", "-Q", ",".join(worker.queues)]
        argv += ["-c", str(self.concurrency), "--without-gossip", "--without-mingle"]
        log = self.tmp / f"worker-{worker.name}.{worker.starts}.log"
        worker.proc = spawn(argv, log=log, env=self.env())

    # --- faults ------------------------------------------------------------------------------

    def kill_serve(self, sig: int = 9) -> None:  # Stack's: the first serve
        self.kill_serve_at(self.serves[0], sig)

    def kill_serve_at(self, serve: Serve, sig: int = 9) -> None:
        """Signal one ``serve`` (its group) and wait until it is gone."""
        self._kill(serve.proc, sig)
        serve.proc = None

    def restart_serve(self, serve: Serve) -> float:
        """Start it again on its port, as a pod is restarted; seconds until it is ready."""
        started = time.monotonic()
        self.spawn_serve(serve)
        self.wait_serve(serve)
        return time.monotonic() - started

    def kill_worker(self, worker: Worker, sig: int = 9) -> None:
        self._kill(worker.proc, sig)
        worker.proc = None

    @staticmethod
    def _kill(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
        if proc is None:
            return
        signal_group(proc, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=30)
        stop(proc)

    # --- what runs -----------------------------------------------------------------------------

    def processes(self) -> dict[str, int]:
        """Role name -> pid of every process of the deployment now running."""
        out: dict[str, int] = {}
        for serve in self.serves:
            if serve.proc is not None:
                out[f"serve-{serve.index}"] = serve.proc.pid
        for worker in self.workers:
            if worker.proc is not None:
                out[f"worker-{worker.name}"] = worker.proc.pid
        for name, proc in (("beat", self.beat), ("drainer", self.drainer), ("proxy", self.proxy)):
            if proc is not None:
                out[name] = proc.pid
        return out

    def stop(self) -> None:
        """Everything, side by side (a graceful stop takes seconds each)."""
        procs = [serve.proc for serve in self.serves] + [worker.proc for worker in self.workers]
        procs += [self.proxy, self.beat, self.drainer]
        threads = [threading.Thread(target=stop, args=(p,)) for p in procs if p is not None]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for serve in self.serves:
            serve.proc = None
        for worker in self.workers:
            worker.proc = None
        self.proxy = self.beat = self.drainer = self.serve_proc = None


@contextlib.contextmanager
def scale_deployment(
    tmp: Path,
    *,
    config: str,
    fakes: Sequence[FakeLLM],
    keys: Mapping[str, tuple[str, Sequence[str]]],
    serves: int,
    workers: Mapping[str, Sequence[str]],
    concurrency: int,
    env: dict[str, str] | None = None,
) -> Iterator[ScaleStack]:
    """The upstreams, a private Redis, a scratch PostgreSQL database and the deployment: the
    config applied and ``keys`` created while every process starts. The caller waits for it
    (:meth:`ScaleStack.wait_all`: it may start its client first). All of it is stopped and
    dropped on the way out, whatever happens."""
    base = postgres_base()
    if base is None:
        raise HarnessError("needs PostgreSQL: set DATABASE_URL (or CHAOS_DATABASE_URL)")
    tmp.mkdir(parents=True, exist_ok=True)
    redis = PrivateRedis(tmp)
    stack: ScaleStack | None = None
    db: Database | None = None
    try:
        for fake in fakes:
            fake.tmp.mkdir(parents=True, exist_ok=True)
            fake.spawn()
        redis.start()
        began = time.monotonic()
        db = Database.create("scale", tmp / "var", base)
        phases = {"database": time.monotonic() - began}
        stack = ScaleStack(
            tmp=tmp,
            config=config,
            db=db,
            redis=redis,
            serves=serves,
            workers=workers,
            concurrency=concurrency,
            env=env,
        )
        for fake in fakes:
            fake.wait_ready()
        # Side by side: the config, the keys (they do not depend on it) and every process (each
        # reads the config when it changes: a ``serve`` within a second, a worker per task).
        failed: list[BaseException] = []

        def beside(name: str, step: Callable[[], None]) -> threading.Thread:
            def run() -> None:
                began = time.monotonic()
                try:
                    step()
                except BaseException as exc:  # re-raised below, in this thread
                    failed.append(exc)
                phases[name] = time.monotonic() - began

            thread = threading.Thread(target=run, name=f"scale-{name}")
            thread.start()
            return thread

        made = stack
        steps = [
            beside("apply", made.apply_config),
            beside("keys", lambda: made.create_keys(keys, admin=False)),
        ]
        stack.spawn_all()
        for thread in steps:
            thread.join()
        if failed:
            raise failed[0]
        stack.phases = phases
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        redis.stop()
        for fake in fakes:
            fake.stop()
        if db is not None:
            db.drop()
