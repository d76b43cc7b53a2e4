"""The processes of one scenario: a scratch database, a private Redis, fakellm, and Breakwater.

Every process is started in its own process group and recorded, so that :func:`stop_all` (run
on the way out, whatever happens) leaves nothing behind; a stopped (SIGSTOP) Redis is continued
before it is killed. Scratch PostgreSQL databases are created next to the one ``DATABASE_URL``
(or ``CHAOS_DATABASE_URL``) names and dropped afterwards; without PostgreSQL the deployment
uses SQLite in its own var directory.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import common
from bench.common import HOST, free_port, kill_group

ROOT = common.ROOT
PYTHON = sys.executable  # the venv the harness runs in (make chaos / pytest: .venv)
REDIS_PORTS = range(6391, 6400)  # private servers only: never the shared 6379
START_TIMEOUT_S = 60.0
MANAGE_TIMEOUT_S = 180.0

# Every process started here, so that it can be stopped whatever happens.
_PROCS: list[subprocess.Popen[bytes]] = []
_PAUSED: set[int] = set()  # pids of processes we SIGSTOPped and have not continued yet
_DATABASES: list[Database] = []


class HarnessError(RuntimeError):
    """The harness could not do what a scenario needs (not a measured failure of Breakwater)."""


# --- processes -----------------------------------------------------------------------------------


def spawn(argv: Sequence[str], *, log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _PROCS.append(proc)
    return proc


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None:
        return
    if proc.pid in _PAUSED:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGCONT)
        _PAUSED.discard(proc.pid)
    kill_group(proc)
    with contextlib.suppress(ValueError):
        _PROCS.remove(proc)


def signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    """Send ``sig`` to the process's group (it was started as a group leader)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
    if sig == signal.SIGSTOP:
        _PAUSED.add(proc.pid)
    elif sig == signal.SIGCONT:
        _PAUSED.discard(proc.pid)


def stop_all() -> None:
    """Stop every process started here, then drop every scratch database (the templates stay
    for the next scenario: :func:`drop_templates`)."""
    for proc in list(_PROCS):
        stop(proc)
    for db in list(_DATABASES):
        db.drop()


def guard_run(alarm_s: int) -> None:
    """A run's safety net: SIGTERM, SIGINT and an alarm after ``alarm_s`` end it as an exit, so
    the ``atexit`` handlers stop every process it started and drop its template databases."""

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGALRM):
        signal.signal(sig, _term)
    atexit.register(drop_templates)
    atexit.register(stop_all)
    signal.alarm(alarm_s)


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def logs(directory: Path, n: int = 2000) -> str:
    """The tail of every log under ``directory``, each under its name."""
    parts = []
    for log in sorted(directory.rglob("*.log")):
        text = tail(log, n).strip()
        if text:
            parts.append(f"--- {log.name}\n{text}")
    return "\n".join(parts)


def keep(base: Path, target: Path, patterns: Sequence[str] = ("*.log",)) -> None:
    """Copy the files under ``base`` matching ``patterns`` into ``target``, flat (``a/b.log``
    becomes ``a--b.log``)."""
    target.mkdir(parents=True, exist_ok=True)
    for pattern in patterns:
        for path in base.rglob(pattern):
            shutil.copyfile(path, target / path.relative_to(base).as_posix().replace("/", "--"))


def http_json(url: str, *, key: str | None = None, timeout_s: float = 5.0) -> Any:
    """GET ``url`` and decode its JSON (raises OSError / ValueError on failure)."""
    import json

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        return json.loads(resp.read())


def http_post(url: str, body: bytes = b"{}", *, timeout_s: float = 5.0) -> Any:
    import json

    request = urllib.request.Request(
        url, data=body, headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout_s) as resp:
        return json.loads(resp.read() or b"null")


# --- the environment of the application's processes ---------------------------------------------

_DROP = {
    "DEBUG",
    "DATABASE_URL",
    "REDIS_URL",
    "REDIS_HOST",
    "REDIS_PORT",
    "CELERY_BROKER_URL",
    "DJANGO_SETTINGS_MODULE",
    "PROMETHEUS_MULTIPROC_DIR",
    "BREAKWATER_VAR_DIR",
    "BREAKWATER_SERVE_DRAINS",
}


def app_env(extra: dict[str, str]) -> dict[str, str]:
    """The harness's environment minus anything that points at a real database or Redis, plus
    ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in _DROP}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


# --- databases -----------------------------------------------------------------------------------


def postgres_base() -> str | None:
    """The PostgreSQL server to create scratch databases on: ``CHAOS_DATABASE_URL``, else
    ``DATABASE_URL`` when it is PostgreSQL; None means SQLite."""
    for name in ("CHAOS_DATABASE_URL", "DATABASE_URL"):
        url = os.environ.get(name, "").strip()
        if url.startswith(("postgres://", "postgresql://")):
            return url
    return None


def postgres_reachable(url: str) -> bool:
    try:
        import psycopg
    except ImportError:
        return False
    try:
        with psycopg.connect(_with_db(url, "postgres"), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _with_db(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path="/" + name))


class Database:
    """A scratch database: PostgreSQL (``url`` set) or the deployment's SQLite file."""

    def __init__(self, *, url: str | None, sqlite_path: Path | None) -> None:
        self.url = url
        self.sqlite_path = sqlite_path
        self.name = urllib.parse.urlsplit(url).path.lstrip("/") if url else str(sqlite_path)
        self.dropped = False

    @classmethod
    def create(cls, hint: str, var_dir: Path, base: str | None) -> Database:
        """A migrated database for one scenario: a copy of :func:`template`'s (a PostgreSQL
        ``CREATE DATABASE ... TEMPLATE``, or a copy of the SQLite file), which saves running
        the migrations for every scenario."""
        tpl = template(base)
        if tpl.url is None:
            assert tpl.sqlite_path is not None
            var_dir.mkdir(parents=True, exist_ok=True)
            path = var_dir / "breakwater.sqlite3"
            shutil.copyfile(tpl.sqlite_path, path)
            return cls(url=None, sqlite_path=path)
        assert base is not None
        db = cls._create_postgres(base, hint, tpl.name)
        _DATABASES.append(db)
        return db

    @classmethod
    def _create_postgres(cls, base: str, hint: str, template: str | None) -> Database:
        import psycopg

        stem = urllib.parse.urlsplit(base).path.lstrip("/") or "postgres"
        name = f"{stem}_{hint}_{secrets.token_hex(2)}"[:63]
        sql = f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else "")
        with psycopg.connect(_with_db(base, "postgres"), autocommit=True) as conn:
            conn.execute(sql)
        return cls(url=_with_db(base, name), sqlite_path=None)

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.url} if self.url else {}

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of one read (a fresh connection each time: the database may have been made to
        refuse connections, or have been restarted, since the last one)."""
        if self.url:
            import psycopg

            with psycopg.connect(self.url, connect_timeout=5, autocommit=True) as conn:
                return list(conn.execute(sql, tuple(params)).fetchall())
        assert self.sqlite_path is not None
        lite = sqlite3.connect(self.sqlite_path, timeout=30)
        try:
            return list(lite.execute(sql.replace("%s", "?"), tuple(params)).fetchall())
        finally:
            lite.close()

    def _maintenance(self, *statements: str, params: Sequence[Any] = ()) -> None:
        """Statements on the server's ``postgres`` database (``params`` for the last one)."""
        import psycopg

        assert self.url is not None
        with psycopg.connect(_with_db(self.url, "postgres"), autocommit=True) as conn:
            for i, statement in enumerate(statements):
                last = i == len(statements) - 1
                conn.execute(statement, tuple(params) if last else None)

    def refuse_connections(self) -> None:
        """Real PostgreSQL refusing: no new connection to this database, the open ones ended."""
        if not self.url:
            raise HarnessError("refusing connections needs PostgreSQL")
        self._maintenance(
            f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS false',
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            params=(self.name,),
        )

    def allow_connections(self) -> None:
        if self.url:
            self._maintenance(f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true')

    def drop(self) -> None:
        """Drop it (PostgreSQL; a SQLite file goes with its directory)."""
        if self.dropped or not self.url:
            return
        self.dropped = True
        with contextlib.suppress(Exception):
            self._maintenance(
                f'ALTER DATABASE "{self.name}" WITH ALLOW_CONNECTIONS true',
                f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)',
            )
        with contextlib.suppress(ValueError):
            _DATABASES.remove(self)


_TEMPLATES: dict[str | None, Database] = {}
_TEMPLATE_DIRS: list[Path] = []


def template(base: str | None) -> Database:
    """The database every scenario's is copied from: migrated once per harness process (on the
    PostgreSQL server of ``base``, or SQLite), dropped by :func:`drop_templates`."""
    if base in _TEMPLATES:
        return _TEMPLATES[base]
    tmp = Path(tempfile.mkdtemp(prefix="bw-chaos-template-"))
    _TEMPLATE_DIRS.append(tmp)
    if base is None:
        db = Database(url=None, sqlite_path=tmp / "breakwater.sqlite3")
    else:
        db = Database._create_postgres(base, "template", None)
    env = app_env({"BREAKWATER_VAR_DIR": str(tmp), "LOG_LEVEL": "WARNING", **db.env()})
    done = subprocess.run(
        [PYTHON, "manage.py", "migrate", "--no-input", "-v", "0"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=MANAGE_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        db.drop()
        raise HarnessError(f"manage.py migrate failed:\n{done.stderr[-3000:]}")
    _TEMPLATES[base] = db
    return db


def drop_templates() -> None:
    for db in _TEMPLATES.values():
        db.drop()
    _TEMPLATES.clear()
    for path in _TEMPLATE_DIRS:
        shutil.rmtree(path, ignore_errors=True)
    _TEMPLATE_DIRS.clear()


# --- a private Redis -----------------------------------------------------------------------------


def port_in_use(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((HOST, port)) == 0


class PrivateRedis:
    """``redis-server`` on a free port of 6391-6399, no persistence: ours to stop and kill."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = tmp / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def start(self) -> None:
        """Start it: on the port it had (a restart), else on the first free one of 6391-6399
        (the next one if another process takes it first)."""
        if self.port:
            if not self._run(self.port):
                raise HarnessError(f"redis-server could not start again on {self.port}")
            return
        for port in REDIS_PORTS:
            if not port_in_use(port) and self._run(port):
                self.port = port
                return
        raise HarnessError(
            f"no free port in 6391-6399 for a private redis-server:\n{tail(self.log)}"
        )

    def _run(self, port: int) -> bool:
        """Whether a redis-server of ours now answers on ``port`` (not someone else's)."""
        argv = ["redis-server", "--port", str(port), "--bind", HOST]
        argv += ["--save", "", "--appendonly", "no", "--daemonize", "no"]
        argv += ["--dir", str(self.tmp), "--maxclients", "10000"]
        proc = spawn(argv, log=self.log, env=dict(os.environ))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            if self._pid(port) == proc.pid:
                self.proc = proc
                return True
            time.sleep(0.05)
        stop(proc)
        return False

    @staticmethod
    def _pid(port: int) -> int | None:
        import redis

        try:
            client = redis.Redis(host=HOST, port=port, socket_timeout=0.5)
            try:
                return int(client.info("server")["process_id"])
            finally:
                client.close()
        except (redis.RedisError, KeyError, ValueError):
            return None

    def client(self, timeout_s: float = 2.0) -> Any:
        import redis

        return redis.Redis(
            host=HOST, port=self.port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )

    def ping(self) -> bool:
        import redis

        try:
            client = self.client(0.5)
            try:
                return bool(client.ping())
            finally:
                client.close()
        except redis.RedisError:
            return False

    def pause(self) -> None:
        assert self.proc is not None
        signal_group(self.proc, signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        signal_group(self.proc, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL: the data is gone (no persistence)."""
        assert self.proc is not None
        signal_group(self.proc, signal.SIGKILL)
        self.proc.wait(timeout=10)
        stop(self.proc)
        self.proc = None

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


# --- fakellm -------------------------------------------------------------------------------------


class FakeLLM:
    """``manage.py fakellm`` (docs/FAKELLM.md) as the upstream of every provider."""

    def __init__(self, tmp: Path, **flags: float) -> None:
        self.tmp = tmp
        self.flags = flags
        self.port = free_port()  # known before it starts: the config names its URL
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def spawn(self) -> None:
        """Start it without waiting (:meth:`wait_ready` waits): the database set-up goes on
        meanwhile."""
        argv = [PYTHON, "manage.py", "fakellm", "--host", HOST, "--port", str(self.port)]
        argv += ["--seed", "1"]
        for name, value in self.flags.items():
            argv += [f"--{name.replace('_', '-')}", f"{value:g}"]
        # Its own var directory: manage.py loads the settings, which may create files there.
        env = app_env({"BREAKWATER_VAR_DIR": str(self.tmp / "fakellm-var"), "LOG_LEVEL": "WARNING"})
        self.proc = spawn(argv, log=self.tmp / "fakellm.log", env=env)

    def wait_ready(self) -> None:
        assert self.proc is not None
        log = self.tmp / "fakellm.log"
        common.wait_ready(self.proc, f"{self.url}/_admin/stats", log, timeout_s=START_TIMEOUT_S)

    def start(self) -> None:
        self.spawn()
        self.wait_ready()

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = http_json(f"{self.url}/_admin/stats")
        return data

    def calls(self) -> int:
        """Generation requests received (counted on arrival)."""
        endpoint = self.stats().get("endpoints", {}).get("/v1/chat/completions", {})
        return int(endpoint.get("total", 0))

    def in_flight(self) -> int:
        return int(self.stats().get("in_flight", 0))

    def reset(self) -> None:
        """Stats and request log emptied (the start-up faults stay)."""
        http_post(f"{self.url}/_admin/reset")

    def stop(self) -> None:
        stop(self.proc)
        self.proc = None


# --- Breakwater ----------------------------------------------------------------------------------


class Stack:
    """One Breakwater deployment.

    Embedded: ``serve`` alone (state, journal, worker and scheduler in its process).
    Distributed: ``serve`` with ``REDIS_URL`` and ``BREAKWATER_SERVE_DRAINS=0``, one
    ``drain_records`` and one Celery worker with beat (``-B``): what a deployment runs
    (docs/INTERFACES.md §6), the reaper included.
    """

    def __init__(
        self,
        *,
        tmp: Path,
        mode: str,
        config: str,
        db: Database,
        redis: PrivateRedis | None,
        env: dict[str, str] | None = None,
        celery: bool = True,
    ) -> None:
        if mode not in ("embedded", "distributed"):
            raise ValueError(mode)
        if mode == "distributed" and redis is None:
            raise ValueError("distributed mode needs a Redis")
        self.tmp = tmp
        self.mode = mode
        self.config = config
        self.db = db
        self.redis = redis
        self.extra = dict(env or {})
        self.celery_on = celery and mode == "distributed"
        self.var_dir = tmp / "var"
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.serve_proc: subprocess.Popen[bytes] | None = None
        self.drainer: subprocess.Popen[bytes] | None = None
        self.celery: subprocess.Popen[bytes] | None = None
        self.admin_key = ""
        self.keys: dict[str, str] = {}
        self.serve_starts = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def env(self) -> dict[str, str]:
        extra = {"BREAKWATER_VAR_DIR": str(self.var_dir), "LOG_LEVEL": "WARNING"}
        extra.update(self.db.env())
        if self.mode == "distributed":
            assert self.redis is not None
            extra["REDIS_URL"] = self.redis.url
            extra["BREAKWATER_SERVE_DRAINS"] = "0"
        extra.update(self.extra)
        return app_env(extra)

    def manage(self, *args: str, stdin: str | None = None) -> str:
        done = subprocess.run(
            [PYTHON, "manage.py", *args],
            cwd=ROOT,
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=MANAGE_TIMEOUT_S,
            check=False,
        )
        if done.returncode != 0:
            raise HarnessError(f"manage.py {' '.join(args[:2])} failed:\n{done.stderr[-3000:]}")
        return done.stdout

    def setup(self, keys: Mapping[str, tuple[str, Sequence[str]]], *, admin: bool = True) -> None:
        """Apply the config (the database is migrated already), create the keys side by side:
        ``keys`` (name -> scopes, agents: ``self.keys[name]``) and, with ``admin``, the admin
        key the observers read the API with (``self.admin_key``)."""
        self.apply_config()
        self.create_keys(keys, admin=admin)

    def apply_config(self) -> None:
        path = self.tmp / "breakwater.yaml"
        path.write_text(self.config)
        self.manage("apply", "-f", str(path))

    def create_keys(
        self, keys: Mapping[str, tuple[str, Sequence[str]]], *, admin: bool = True
    ) -> None:
        """The keys of :meth:`setup`, created side by side."""
        wanted = {**({"chaos-admin": ("admin", ())} if admin else {}), **keys}
        procs = {}
        for name, (scopes, agents) in wanted.items():
            argv = [PYTHON, "manage.py", "create_api_key", "--name", name, "--scopes", scopes]
            if agents:
                argv += ["--agents", ",".join(agents)]
            procs[name] = subprocess.Popen(
                argv,
                cwd=ROOT,
                env=self.env(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=MANAGE_TIMEOUT_S)
            key = out.strip().splitlines()[-1].strip() if out.strip() else ""
            if proc.returncode != 0 or not key.startswith("bw_"):
                raise HarnessError(f"create_api_key {name} failed: {err[-2000:]}")
            self.keys[name] = key
        self.admin_key = self.keys.get("chaos-admin", "")

    def start(self) -> None:
        if self.mode == "distributed":
            self.drainer = spawn(
                [PYTHON, "manage.py", "drain_records"],
                log=self.tmp / "drainer.log",
                env=self.env(),
            )
            if self.celery_on:
                argv = [PYTHON, "-m", "celery", "-A", "console", "worker", "-B"]
                argv += ["-c", "1", "-l", "WARNING", "--schedule", str(self.tmp / "beat")]
                self.celery = spawn(argv, log=self.tmp / "celery.log", env=self.env())
        self.start_serve()

    def start_serve(self) -> None:
        self.serve_starts += 1
        log = self.tmp / f"serve-{self.serve_starts}.log"
        argv = [PYTHON, "manage.py", "serve", "--host", HOST, "--port", str(self.port)]
        self.serve_proc = spawn(argv, log=log, env=self.env())
        common.wait_ready(self.serve_proc, f"{self.url}/readyz", log, timeout_s=START_TIMEOUT_S)

    def kill_serve(self, sig: int = signal.SIGKILL) -> None:
        """Signal ``serve`` (its whole group) and wait for it to be gone."""
        assert self.serve_proc is not None
        signal_group(self.serve_proc, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.serve_proc.wait(timeout=30)
        stop(self.serve_proc)
        self.serve_proc = None

    def stop(self) -> None:
        for proc in (self.serve_proc, self.drainer, self.celery):
            stop(proc)
        self.serve_proc = self.drainer = self.celery = None


@contextlib.contextmanager
def deployment(
    tmp: Path,
    *,
    hint: str,
    mode: str,
    config: str,
    fake: FakeLLM,
    keys: Mapping[str, tuple[str, Sequence[str]]] | None = None,
    admin: bool = True,
    env: dict[str, str] | None = None,
    celery: bool = True,
) -> Iterator[Stack]:
    """fakellm, a scratch database, a private Redis (distributed mode) and Breakwater, set up
    (``keys``: see :meth:`Stack.setup`) and started; all of it stopped and dropped on the way
    out, whatever happens."""
    tmp.mkdir(parents=True, exist_ok=True)
    redis = PrivateRedis(tmp) if mode == "distributed" else None
    stack: Stack | None = None
    db: Database | None = None
    try:
        fake.spawn()
        if redis is not None:
            redis.start()
        db = Database.create(hint, tmp / "var", postgres_base())
        stack = Stack(tmp=tmp, mode=mode, config=config, db=db, redis=redis, env=env, celery=celery)
        stack.setup(keys or {}, admin=admin)
        fake.wait_ready()
        stack.start()
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        if redis is not None:
            redis.stop()
        fake.stop()
        if db is not None:
            db.drop()


def wait_until(predicate: Any, *, timeout_s: float, every_s: float = 0.2) -> bool:
    """Poll ``predicate()`` until it is true or the time runs out; whether it became true."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError, urllib.error.URLError):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every_s)
