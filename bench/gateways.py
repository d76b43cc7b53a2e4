"""Gateway comparison: direct vs Breakwater vs LiteLLM proxy vs Portkey gateway, one upstream.

One zero-delay ``fakellm`` (``python -m agents.devtools.fakellm``, its own process) answers every arm;
``wrk`` sends OpenAI ``POST /v1/chat/completions`` requests on 127.0.0.1:

* ``direct``: wrk -> fakellm, the floor any gateway adds to;
* ``breakwater``: wrk -> ``manage.py serve`` (uvicorn + uvloop) with ``REDIS_URL`` set (shared state
  in Redis, records through the Redis journal into a scratch SQLite database) and one agent with
  every safeguard on: agent breaker, rpm and tpm limits far above the run, two deployments of the
  model (two providers, both fakellm), a fallback model, retries, a timeout, the response cache,
  and daily budgets (global and agent) far above the run's spend with a price for the model. The
  client authenticates with an API key (execute scope) created by ``manage.py create_api_key``;
* ``litellm`` and ``portkey`` (with ``--peers`` or ``BENCH_PEERS=1``): LiteLLM proxy (1 worker, a
  master key, no database) and Portkey's gateway (node), each installed by this script into
  ``var/bench/`` (its own venv / ``npm install``), never as project dependencies. A peer that
  cannot be installed or started is reported as skipped, with the reason.

Every request's user message is unique (a wrk Lua script numbers them), so the response cache is
exercised as a miss on every call, as for a fresh question, never as a hit. Per arm and round: a
fresh gateway process, one sanity request (200, fakellm's answer, the system prompt upstream),
warm-up, then

* latency at concurrency 1: ``wrk -t1 -c1 --latency`` (p50, p99); *added* = arm - direct, same
  round;
* throughput at concurrency 10: ``wrk -t1 -c10`` (requests/s);
* CPU per request: user + system time of the gateway's process tree over the two measured runs
  / their requests; RSS of the tree after them;
* checks: no non-2xx answer and no socket error; fakellm saw as many calls as wrk completed
  requests (plus at most one per connection, cut at the end of a run); for Breakwater, its
  metrics show no retry, fallback or cache hit, and one upstream call per execution.

The arms are interleaved round by round, the order rotating; the tables give the median of the
rounds with the min-max. Usage::

    .venv/bin/python bench/gateways.py [--peers] [--seconds 10] [--warmup 2] [--rounds 3]
        [--source DIR]  # serve another tree, e.g. a `git archive` export, with this venv
    .venv/bin/python bench/gateways.py --profile 15  # Breakwater's CPU by thread and hotspots
    .venv/bin/python bench/gateways.py --baseline DIR  # + the tree in DIR as its own arm (A/B)

The whole run is bounded; every process it starts (each in its own process group), the temp dir
and the Redis database it used are cleaned up on the way out, whatever happens. Results:
docs/BENCHMARKS.md, "Gateway comparison".
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402
from bench.common import (  # noqa: E402
    HOST,
    WrkResult,
    cpu_s,
    free_port,
    kill_group,
    parse_wrk,
    tree_cpu_s,
    tree_rss_mib,
)
from bench.runtime import MAX_TOKENS, SYSTEM_PROMPT, USER_TEXT, fakellm_total  # noqa: E402

PY = ROOT / ".venv" / "bin" / "python"
PEERS_DIR = ROOT / "var" / "bench"
LITELLM_DIR = PEERS_DIR / "litellm"
PORTKEY_DIR = PEERS_DIR / "portkey"
PORTKEY_SERVER = (
    PORTKEY_DIR / "node_modules" / "@portkey-ai" / "gateway" / "build" / "start-server.js"
)

AGENT = "bench-agent"
MODEL = "bench-model"
FALLBACK = "bench-fallback"
UPSTREAM = "bench-upstream"
UPSTREAM_KEY = "sk-bench"
MARK = "@@UNIQUE@@"  # where the Lua script puts each request's number
TARGET_ADDED_P50_MS = 1.5
TARGET_X_LITELLM = 5.0
TARGET_X_PORTKEY = 1.0
START_TIMEOUT_S = {"breakwater": 60.0, "baseline": 60.0, "litellm": 180.0, "portkey": 60.0}
INSTALL_TIMEOUT_S = {"litellm": 1500.0, "portkey": 600.0}
APP_DIRS = ("agents", "budgets", "console", "incidents")
REDIS_MARKER = "bwbench:gateways"  # this db belongs to the gateway benchmark (see _claim_redis)

# Every process this script starts, so that it can be killed whatever happens.
_PROCS: list[subprocess.Popen[bytes]] = []


class Skipped(Exception):
    """A peer that cannot run here; the message says why."""


# --- processes -----------------------------------------------------------------------------------


def _spawn(
    argv: list[str], *, log: Path, env: dict[str, str], cwd: Path = ROOT
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    _PROCS.append(proc)
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    kill_group(proc)
    with contextlib.suppress(ValueError):
        _PROCS.remove(proc)


def _stop_all() -> None:
    for proc in list(_PROCS):
        _stop(proc)


def _run_logged(argv: list[str], *, log: Path, env: dict[str, str], timeout_s: float) -> str | None:
    """Run a command to completion (its own process group, output appended to ``log``); None on
    success, else why it failed."""
    proc = _spawn(argv, log=log, env=env)
    try:
        code = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(argv[:4])}` did not finish in {timeout_s:.0f} s"
    finally:
        _stop(proc)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-3:]
        return f"`{' '.join(argv[:4])}` exited {code}: " + " | ".join(tail)
    return None


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment minus anything that would point a child at a real database or Redis."""
    drop = {
        "DEBUG",
        "DATABASE_URL",
        "REDIS_URL",
        "REDIS_HOST",
        "REDIS_PORT",
        "CELERY_BROKER_URL",
        "DJANGO_SETTINGS_MODULE",
        "PROMETHEUS_MULTIPROC_DIR",
    }
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def start_fakellm(log: Path, source: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = [
        str(PY),
        "-m",
        "agents.devtools.fakellm",
        "--host",
        HOST,
        "--port",
        str(port),
        "--seed",
        "1",
    ]
    proc = _spawn(argv, log=log, env=_clean_env(), cwd=source)
    url = f"http://{HOST}:{port}"
    common.wait_ready(proc, f"{url}/_admin/stats", log)
    return proc, url


# --- requests ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """What wrk talks to, and the gateway process tree to measure (None: no gateway)."""

    url: str
    headers: dict[str, str]
    model: str
    send_system: bool  # Breakwater's agent adds the system prompt itself
    pid: int | None
    drainer_pid: int | None = None  # Breakwater's journal drainer, a process of its own

    def body(self, unique: str) -> str:
        messages = [{"role": "user", "content": f"[{unique}] {USER_TEXT}"}]
        if self.send_system:
            messages.insert(0, {"role": "system", "content": SYSTEM_PROMPT})
        return json.dumps({"model": self.model, "messages": messages, "max_tokens": MAX_TOKENS})


def lua_script(endpoint: Endpoint) -> str:
    """A wrk script that POSTs the endpoint's body with a unique user message per request
    (``<nonce>-<thread>-<n>``; the nonce is the script's first argument)."""
    pre, post = endpoint.body(MARK).split(MARK)
    lines = [
        "-- generated by bench/gateways.py",
        'wrk.method = "POST"',
        'wrk.headers["Content-Type"] = "application/json"',
    ]
    for name, value in endpoint.headers.items():
        lines.append(f"wrk.headers[ [==[{name}]==] ] = [==[{value}]==]")
    lines += [
        f"local pre = [==[{pre}]==]",
        f"local post = [==[{post}]==]",
        "local n = 0",
        "local threads = 0",
        "function setup(thread)",
        "  threads = threads + 1",
        '  thread:set("tid", threads)',
        "end",
        "function init(args)",
        '  nonce = args[1] or "x"',
        "end",
        "function request()",
        "  n = n + 1",
        '  return wrk.format(nil, nil, nil, pre .. nonce .. "-" .. tid .. "-" .. n .. post)',
        "end",
    ]
    return "\n".join(lines) + "\n"


def sanity_check(endpoint: Endpoint, fake_url: str) -> None:
    """One request: 200 with fakellm's answer, and upstream got the system prompt and the user's
    message (so the arm really goes through to fakellm with the same conversation)."""
    unique = f"sanity-{secrets.token_hex(4)}"
    request = urllib.request.Request(
        endpoint.url,
        data=endpoint.body(unique).encode(),
        headers={"Content-Type": "application/json", **endpoint.headers},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    if status != 200:
        raise RuntimeError(f"sanity request: HTTP {status}: {raw[:500]!r}")
    content = json.loads(raw)["choices"][0]["message"]["content"]
    if not content.startswith(f"echo: [{unique}]"):
        raise RuntimeError(f"sanity request: unexpected answer {content!r}")
    with urllib.request.urlopen(f"{fake_url}/_admin/requests?limit=1", timeout=5) as resp:
        items = json.loads(resp.read())["items"]
    messages = items[-1]["body"]["messages"] if items else []
    seen = [(m.get("role"), m.get("content")) for m in messages]
    if seen != [("system", SYSTEM_PROMPT), ("user", f"[{unique}] {USER_TEXT}")]:
        raise RuntimeError(f"sanity request: upstream saw another conversation: {seen}")


# --- arms ----------------------------------------------------------------------------------------


@dataclass
class Context:
    tmp: Path
    fake_url: str
    fake_pid: int
    redis_url: str
    database_url: str | None


class Arm:
    key = ""
    label = ""
    version = ""

    def prepare(self, ctx: Context) -> None:
        """Install and configure, once per run (raise :class:`Skipped` for a peer that cannot)."""

    @contextlib.contextmanager
    def running(self, ctx: Context, log: Path) -> Iterator[Endpoint]:
        raise NotImplementedError
        yield  # pragma: no cover

    def check(self, ctx: Context, endpoint: Endpoint, upstream_calls: int) -> str | None:
        """An arm's own end-of-round check; a message when it fails."""
        return None


class Direct(Arm):
    key, label = "direct", "direct (client -> fakellm)"

    @contextlib.contextmanager
    def running(self, ctx: Context, log: Path) -> Iterator[Endpoint]:
        headers = {"Authorization": f"Bearer {UPSTREAM_KEY}"}
        yield Endpoint(f"{ctx.fake_url}/v1/chat/completions", headers, UPSTREAM, True, None)


class Breakwater(Arm):
    key, label = "breakwater", "Breakwater (Redis state)"

    def __init__(self, source: Path, *, baseline: bool = False) -> None:
        self.source = source
        if baseline:  # the same arm on another tree, for a side-by-side A/B in one run
            self.key, self.label = "baseline", f"Breakwater baseline ({source.name})"
        self.api_key = ""
        self.var_dir = Path()

    def env(self, ctx: Context) -> dict[str, str]:
        extra = {
            "REDIS_URL": ctx.redis_url,
            "BREAKWATER_VAR_DIR": str(self.var_dir),
            "LOG_LEVEL": "WARNING",
            "BENCH_UPSTREAM_KEY": UPSTREAM_KEY,
        }
        if ctx.database_url:
            extra["DATABASE_URL"] = ctx.database_url
        return _clean_env(**extra)

    def manage(self, ctx: Context, *args: str) -> str:
        done = subprocess.run(
            [str(PY), "manage.py", *args],
            cwd=self.source,
            env=self.env(ctx),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{done.stderr[-2000:]}")
        return done.stdout

    def prepare(self, ctx: Context) -> None:
        self.var_dir = ctx.tmp / f"{self.key}-var"
        self.var_dir.mkdir()
        self.version = (
            common.provenance(APP_DIRS) if self.source == ROOT else f"the tree in {self.source}"
        )
        config = ctx.tmp / f"{self.key}.yaml"
        config.write_text(breakwater_config(ctx.fake_url))
        self.manage(ctx, "migrate", "--no-input", "-v", "0")
        self.manage(ctx, "apply", "-f", str(config))
        out = self.manage(
            ctx, "create_api_key", "--name", "bench", "--scopes", "execute", "--agents", AGENT
        )
        self.api_key = out.strip().splitlines()[-1].strip()
        if not self.api_key.startswith("bw_"):
            raise RuntimeError(f"create_api_key printed no key: {out!r}")

    @contextlib.contextmanager
    def running(
        self, ctx: Context, log: Path, profile_to: Path | None = None
    ) -> Iterator[Endpoint]:
        _reset_redis(ctx.redis_url)  # every round starts from the same (empty) shared state
        port = free_port()
        argv = [str(PY), "manage.py", "serve", "--host", HOST, "--port", str(port), "--no-embedded"]
        if profile_to is not None:
            argv[1:1] = ["-c", PROFILED_SERVE, str(profile_to)]
        # As a deployment runs it: the journal drained by its own process, off the serving one
        # (BREAKWATER_SERVE_DRAINS=0); its CPU is reported on a row of its own.
        env = {**self.env(ctx), "BREAKWATER_SERVE_DRAINS": "0"}
        drainer = _spawn(
            [str(PY), "manage.py", "drain_records"],
            log=log.with_name(log.stem + "-drainer.log"),
            env=env,
            cwd=self.source,
        )
        proc = _spawn(argv, log=log, env=env, cwd=self.source)
        try:
            # /readyz: the database and Redis answer; the engine loaded its config before serving.
            common.wait_ready(
                proc, f"http://{HOST}:{port}/readyz", log, timeout_s=START_TIMEOUT_S[self.key]
            )
            headers = {"Authorization": f"Bearer {self.api_key}"}
            url = f"http://{HOST}:{port}/v1/chat/completions"
            yield Endpoint(url, headers, AGENT, False, proc.pid, drainer.pid)
        finally:
            _stop(proc)
            _stop(drainer)

    def check(self, ctx: Context, endpoint: Endpoint, upstream_calls: int) -> str | None:
        metrics_url = endpoint.url.replace("/v1/chat/completions", "/metrics")
        with urllib.request.urlopen(metrics_url, timeout=10) as resp:
            text = resp.read().decode()
        values = _prometheus(text, AGENT)
        statuses = {k: v for k, v in values.items() if k.startswith("agent_requests_total")}
        succeeded = sum(v for k, v in statuses.items() if 'status="succeeded"' in k)
        others = {k: v for k, v in statuses.items() if 'status="succeeded"' not in k and v}
        problems = []
        for name in ("agent_retries_total", "agent_cache_hits_total", "agent_fallbacks_total"):
            total = sum(v for k, v in values.items() if k.startswith(name))
            if total:
                problems.append(f"{name} = {total:g}")
        cancelled = sum(v for k, v in others.items() if 'status="cancelled"' in k)
        if any('status="cancelled"' not in k for k in others):
            problems.append(f"executions not succeeded: {others}")
        # Each execution is one upstream call; one cut off by the end of a wrk run is cancelled.
        if not succeeded <= upstream_calls <= succeeded + cancelled:
            problems.append(
                f"fakellm saw {upstream_calls} calls for {succeeded:g} succeeded "
                f"(+{cancelled:g} cancelled) executions"
            )
        return "; ".join(problems) or None


class LiteLLM(Arm):
    key, label = "litellm", "LiteLLM proxy (1 worker)"

    def prepare(self, ctx: Context) -> None:
        exe = LITELLM_DIR / "bin" / "litellm"
        py = LITELLM_DIR / "bin" / "python"
        log = PEERS_DIR / "litellm-install.log"
        if not exe.exists():
            print(f"installing LiteLLM into {LITELLM_DIR} (log: {log})", file=sys.stderr)
            PEERS_DIR.mkdir(parents=True, exist_ok=True)
            env = _clean_env()
            base = shutil.which("python3") or sys.executable
            steps = [
                [base, "-m", "venv", str(LITELLM_DIR)],
                [str(py), "-m", "pip", "install", "--disable-pip-version-check", "litellm[proxy]"],
            ]
            for argv in steps:
                if reason := _run_logged(
                    argv, log=log, env=env, timeout_s=INSTALL_TIMEOUT_S[self.key]
                ):
                    raise Skipped(f"install failed: {reason}")
            if not exe.exists():
                raise Skipped(f"install failed: no {exe.relative_to(ROOT)} after pip install")
        self.version = "litellm " + _python_version(py, "litellm")
        self.master_key = f"sk-bench-{secrets.token_hex(24)}"

    @contextlib.contextmanager
    def running(self, ctx: Context, log: Path) -> Iterator[Endpoint]:
        port = free_port()
        config = ctx.tmp / "litellm.yaml"
        config.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": MODEL,
                            "litellm_params": {
                                "model": f"openai/{UPSTREAM}",
                                "api_base": f"{ctx.fake_url}/v1",
                                "api_key": UPSTREAM_KEY,
                            },
                        }
                    ],
                    "litellm_settings": {"telemetry": False},
                    "general_settings": {"master_key": self.master_key},
                },
                indent=2,
            )  # JSON is YAML
        )
        argv = [str(LITELLM_DIR / "bin" / "litellm"), "--config", str(config)]
        argv += ["--host", HOST, "--port", str(port), "--num_workers", "1"]
        # No network but PyPI here: use the cost map shipped in the package, not the remote one.
        env = _clean_env(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_LOG="ERROR")
        proc = _spawn(argv, log=log, env=env, cwd=ctx.tmp)
        try:
            common.wait_ready(
                proc,
                f"http://{HOST}:{port}/health/liveliness",
                log,
                timeout_s=START_TIMEOUT_S[self.key],
            )
            headers = {"Authorization": f"Bearer {self.master_key}"}
            url = f"http://{HOST}:{port}/v1/chat/completions"
            yield Endpoint(url, headers, MODEL, True, proc.pid)
        finally:
            _stop(proc)


class Portkey(Arm):
    key, label = "portkey", "Portkey gateway (node)"

    def prepare(self, ctx: Context) -> None:
        node, npm = shutil.which("node"), shutil.which("npm")
        if node is None:
            raise Skipped("node is not installed")
        if not PORTKEY_SERVER.exists():
            if npm is None:
                raise Skipped("npm is not installed")
            log = PEERS_DIR / "portkey-install.log"
            print(f"installing Portkey gateway into {PORTKEY_DIR} (log: {log})", file=sys.stderr)
            PORTKEY_DIR.mkdir(parents=True, exist_ok=True)
            argv = [npm, "install", "--prefix", str(PORTKEY_DIR), "--no-audit", "--no-fund"]
            argv.append("@portkey-ai/gateway")
            reason = _run_logged(
                argv, log=log, env=_clean_env(), timeout_s=INSTALL_TIMEOUT_S[self.key]
            )
            if reason:
                raise Skipped(f"install failed: {reason}")
            if not PORTKEY_SERVER.exists():
                raise Skipped(f"install failed: no {PORTKEY_SERVER.relative_to(ROOT)}")
        package = json.loads((PORTKEY_SERVER.parent.parent / "package.json").read_text())
        node_version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, timeout=30, check=False
        ).stdout.strip()
        self.node = node
        self.version = f"@portkey-ai/gateway {package.get('version', '?')} on node {node_version}"

    @contextlib.contextmanager
    def running(self, ctx: Context, log: Path) -> Iterator[Endpoint]:
        port = free_port()
        argv = [self.node, str(PORTKEY_SERVER), f"--port={port}", "--headless"]
        proc = _spawn(argv, log=log, env=_clean_env(NODE_ENV="production"), cwd=ctx.tmp)
        try:
            common.wait_ready(
                proc, f"http://{HOST}:{port}/", log, timeout_s=START_TIMEOUT_S[self.key]
            )
            headers = {
                "Authorization": f"Bearer {UPSTREAM_KEY}",
                "x-portkey-provider": "openai",
                "x-portkey-custom-host": f"{ctx.fake_url}/v1",
            }
            url = f"http://{HOST}:{port}/v1/chat/completions"
            yield Endpoint(url, headers, UPSTREAM, True, proc.pid)
        finally:
            _stop(proc)


def breakwater_config(fake_url: str) -> str:
    """Config as code (docs/INTERFACES.md §2) for an agent with every safeguard on."""
    providers = [
        {
            "name": name,
            "kind": "openai",
            "base_url": f"{fake_url}/v1",
            "api_key_env": "BENCH_UPSTREAM_KEY",
        }
        for name in ("fakellm-a", "fakellm-b", "fakellm-fallback")
    ]
    price = {"input_usd_per_mtok": 0.15, "output_usd_per_mtok": 0.60, "max_concurrency": 1000}
    models = [
        {"name": MODEL, "provider": "fakellm-a", "upstream_model": UPSTREAM, **price},
        {"name": MODEL, "provider": "fakellm-b", "upstream_model": UPSTREAM, **price},
        {"name": FALLBACK, "provider": "fakellm-fallback", "upstream_model": UPSTREAM, **price},
    ]
    agent = {
        "name": AGENT,
        "model": MODEL,
        "fallback_models": [FALLBACK],
        "system_prompt": SYSTEM_PROMPT,
        "timeout_s": 10,
        "max_retries": 2,
        "max_tokens": 1024,
        "breaker": {"failure_threshold": 5, "recovery_timeout_s": 30, "half_open_max_calls": 1},
        # Far above the run: at 2,000 requests/s a 60 s window holds 120,000 requests.
        "rate_limit": {"rpm": 5_000_000, "tpm": 2_000_000_000},
        "cache_ttl_s": 3600,
        "daily_budget_usd": 1_000_000,  # a request costs about $0.00002
    }
    document = {
        "providers": providers,
        "models": models,
        "agents": [agent],
        "budgets": [{"scope": "global", "daily_limit_usd": 10_000_000}],
    }
    return json.dumps(document, indent=2)  # JSON is YAML


def _prometheus(text: str, agent: str) -> dict[str, float]:
    """``name{labels}`` -> value for the samples of one agent (no ``_created`` samples)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#") or f'agent="{agent}"' not in line:
            continue
        name, _, value = line.rpartition(" ")
        if "_created" in name.split("{")[0]:
            continue
        with contextlib.suppress(ValueError):
            values[name] = float(value)
    return values


def _python_version(py: Path, dist: str) -> str:
    code = f"import importlib.metadata as m; print(m.version({dist!r}))"
    done = subprocess.run(
        [str(py), "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    return done.stdout.strip() or "?"


# --- Redis ---------------------------------------------------------------------------------------


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=10)


def _claim_redis(url: str) -> None:
    """The Breakwater arm flushes its Redis database between rounds, so it must be ours: empty,
    or left by an earlier run of this benchmark (it holds the marker key)."""
    client = _redis(url)
    try:
        size = int(client.dbsize())
        if size and not client.exists(REDIS_MARKER):
            raise SystemExit(
                f"--redis-url {url}: the database holds {size} keys not written by this "
                "benchmark; it flushes the database, so give it an empty one (another db number)"
            )
    finally:
        client.close()
    _reset_redis(url)


def _reset_redis(url: str) -> None:
    client = _redis(url)
    try:
        client.flushdb()
        client.set(REDIS_MARKER, "1")
    finally:
        client.close()


def _redis_cpu_s(url: str) -> float:
    client = _redis(url)
    try:
        info = client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
    finally:
        client.close()


# --- measurement ---------------------------------------------------------------------------------


@dataclass
class Round:
    c1: WrkResult
    c10: WrkResult
    cpu_ms: float | None  # gateway process tree, per request
    rss_mib: float | None
    fake_cpu_ms: float  # fakellm, per request (for reference: the upstream's own cost)
    redis_cpu_ms: float | None  # Redis server, per request, server-wide (Breakwater only)
    drainer_cpu_ms: float | None = None  # Breakwater's journal drainer process, per request
    problems: list[str] = field(default_factory=list)


def _settled_total(fake_url: str) -> int:
    """fakellm's request count once it stops moving (a gateway may still be forwarding requests
    that wrk cut off at the end of the previous run)."""
    total = fakellm_total(fake_url)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = fakellm_total(fake_url)
        if now == total:
            break
        total = now
    return total


def _measured_wrk(
    url: str, script: Path, conns: int, seconds: float, fake_url: str, problems: list[str]
) -> WrkResult:
    before = _settled_total(fake_url)
    nonce = secrets.token_hex(4)
    result = parse_wrk(
        common.wrk(
            url, threads=1, conns=conns, seconds=seconds, script=script, script_args=(nonce,)
        )
    )
    calls = _settled_total(fake_url) - before
    if result.errors:
        problems.append(
            f"c={conns}: {result.non_2xx} non-2xx answers, {result.socket_errors} socket errors"
        )
    # A request cut off at the end of the run may have reached fakellm (at most one per connection).
    if not result.requests <= calls <= result.requests + conns:
        problems.append(f"c={conns}: fakellm saw {calls} calls for {result.requests} responses")
    return result


def measure(arm: Arm, ctx: Context, seconds: float, warmup: float, log: Path) -> Round:
    with arm.running(ctx, log) as endpoint:
        calls0 = fakellm_total(ctx.fake_url)
        sanity_check(endpoint, ctx.fake_url)
        script = ctx.tmp / f"{arm.key}.lua"
        script.write_text(lua_script(endpoint))
        problems: list[str] = []
        pid = endpoint.pid
        fake_pid = ctx.fake_pid

        def gateway_cpu() -> float:
            return tree_cpu_s(pid) if pid is not None else 0.0

        def redis_cpu() -> float:
            return _redis_cpu_s(ctx.redis_url) if isinstance(arm, Breakwater) else 0.0

        def drainer_cpu() -> float:
            return tree_cpu_s(endpoint.drainer_pid) if endpoint.drainer_pid is not None else 0.0

        spent: dict[str, float] = {"gw": 0.0, "fake": 0.0, "redis": 0.0, "drainer": 0.0}
        results: list[WrkResult] = []
        for conns in (1, 10):
            common.wrk(
                endpoint.url, threads=1, conns=conns, seconds=warmup, script=script,
                script_args=(secrets.token_hex(4),),
            )  # fmt: skip
            gw0, fake0, redis0, drain0 = gateway_cpu(), cpu_s(fake_pid), redis_cpu(), drainer_cpu()
            results.append(
                _measured_wrk(endpoint.url, script, conns, seconds, ctx.fake_url, problems)
            )
            spent["gw"] += gateway_cpu() - gw0
            spent["fake"] += cpu_s(fake_pid) - fake0
            spent["redis"] += redis_cpu() - redis0
            spent["drainer"] += drainer_cpu() - drain0
        rss = tree_rss_mib(pid) if pid is not None else None
        if problem := arm.check(ctx, endpoint, _settled_total(ctx.fake_url) - calls0):
            problems.append(problem)
    n = max(1, sum(r.requests for r in results))
    return Round(
        c1=results[0],
        c10=results[1],
        cpu_ms=spent["gw"] * 1000 / n if pid is not None else None,
        rss_mib=rss,
        fake_cpu_ms=spent["fake"] * 1000 / n,
        redis_cpu_ms=spent["redis"] * 1000 / n if isinstance(arm, Breakwater) else None,
        drainer_cpu_ms=spent["drainer"] * 1000 / n if endpoint.drainer_pid is not None else None,
        problems=problems,
    )


class LoadSampler:
    """The 1-minute load average, sampled every 2 s while the rounds run."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(os.getloadavg()[0])
            self._stop.wait(2.0)

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# --- profile -------------------------------------------------------------------------------------

# Runs ``manage.py serve`` with cProfile on the event-loop thread, counting that thread's CPU time
# (not wall time: on a busy machine, waiting for a core would look like work). SIGUSR1 starts
# profiling, SIGUSR2 stops it and writes the stats to the first argument.
PROFILED_SERVE = """
import cProfile, runpy, signal, sys, time
out = sys.argv[1]
sys.argv = sys.argv[2:]
profiler = cProfile.Profile(time.thread_time)
def start(signum, frame):
    profiler.enable()
def stop(signum, frame):
    profiler.disable()
    profiler.dump_stats(out)
signal.signal(signal.SIGUSR1, start)
signal.signal(signal.SIGUSR2, stop)
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def thread_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds of each thread of a process, by role: ``event loop`` (the main thread) or
    ``other threads`` (asyncio.to_thread workers: the record drainer's database writes)."""
    out = {"event loop": 0.0, "other threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError, ValueError):
            tid = int(task.name)
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            seconds = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            out["event loop" if tid == pid else "other threads"] += seconds
    return out


def profile_breakwater(
    arm: Breakwater, ctx: Context, seconds: float, warmup: float, top: int, keep: Path | None
) -> str:
    """Breakwater under ``wrk -t1 -c10``: CPU per request by thread (from /proc, unprofiled),
    then the same load again with cProfile on the event loop: where its CPU time goes."""
    import pstats

    stats_path = ctx.tmp / "serve.pstats"
    lines = []
    with arm.running(ctx, ctx.tmp / "profile-serve.log", profile_to=stats_path) as endpoint:
        assert endpoint.pid is not None
        pid = endpoint.pid
        sanity_check(endpoint, ctx.fake_url)
        script = ctx.tmp / "profile.lua"
        script.write_text(lua_script(endpoint))

        def load(duration: float) -> WrkResult:
            out = common.wrk(
                endpoint.url, threads=1, conns=10, seconds=duration, script=script,
                script_args=(secrets.token_hex(4),),
            )  # fmt: skip
            return parse_wrk(out)

        load(warmup)
        before = thread_cpu_s(pid)
        plain = load(seconds)
        _settled_total(ctx.fake_url)  # let the drainer catch up: its work belongs to these
        after = thread_cpu_s(pid)
        lines.append(
            f"Without the profiler, wrk -t1 -c10 for {seconds:g} s: {plain.rps:,.0f} requests/s; "
            "CPU per request of the serve process: "
            + ", ".join(
                f"{role} {(after[role] - before[role]) * 1000 / max(1, plain.requests):.3f} ms"
                for role in after
            )
            + "."
        )
        os.kill(pid, signal.SIGUSR1)
        profiled = load(seconds)
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 30
        while not stats_path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # dump_stats may still be writing
    if keep is not None:
        shutil.copyfile(stats_path, keep)
    stats = pstats.Stats(str(stats_path))
    n = max(1, profiled.requests)
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tt for (_, _, tt, _, _) in entries.values())

    def name(func: tuple[str, int, str]) -> str:
        path, _, function = func
        for marker in ("site-packages/", str(arm.source) + "/", "/lib/python3.11/"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return f"{path}:{function}"

    def table(title: str, index: int, rows: int) -> list[str]:
        ranked = sorted(entries.items(), key=lambda kv: -kv[1][index])[:rows]
        out = [f"| {title} | µs per request | share |", "|---|---:|---:|"]
        for func, values in ranked:
            out.append(
                f"| `{name(func)}` | {values[index] * 1e6 / n:.0f} | {values[index] / total:.1%} |"
            )
        return out

    lines += [
        "",
        f"cProfile of the event-loop thread (thread CPU time) over another {seconds:g} s of the "
        f"same load: {profiled.rps:,.0f} requests/s under the profiler, {total * 1e3 / n:.3f} ms "
        "of profiled CPU per request (the profiler inflates Python-heavy code).",
        "",
        *table("function (own time)", 2, top),
        "",
        *table("function (including callees)", 3, top),
    ]
    return "\n".join(lines)


# --- report --------------------------------------------------------------------------------------


def _med(values: list[float]) -> float:
    return statistics.median(values)


def _cell(values: list[float], fmt: str) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(_med(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def _added(results: dict[str, list[Round]], key: str, attr: str) -> list[float]:
    """Per round: the arm's c=1 latency percentile minus direct's in the same round."""
    return [
        getattr(r.c1, attr) - getattr(d.c1, attr)
        for r, d in zip(results[key], results["direct"], strict=False)
    ]


_PICKS: dict[str, Callable[[Round], float | None]] = {
    "p50": lambda r: r.c1.p50_ms,
    "p99": lambda r: r.c1.p99_ms,
    "rps_c10": lambda r: r.c10.rps,
    "p99_c10": lambda r: r.c10.p99_ms,
    "cpu": lambda r: r.cpu_ms,
    "rss": lambda r: r.rss_mib,
    "fake_cpu": lambda r: r.fake_cpu_ms,
    "redis_cpu": lambda r: r.redis_cpu_ms,
    "drainer_cpu": lambda r: r.drainer_cpu_ms,
}


def _metric(results: dict[str, list[Round]], key: str, name: str) -> list[float]:
    """One figure of an arm, per round (empty where it does not apply)."""
    if name in ("added_p50", "added_p99"):
        return [] if key == "direct" else _added(results, key, name.removeprefix("added_") + "_ms")
    return [v for r in results[key] if (v := _PICKS[name](r)) is not None]


def report(
    arms: list[Arm],
    results: dict[str, list[Round]],
    skipped: dict[str, str],
    args: argparse.Namespace,
    load: list[float],
    load_edges: tuple[float, float],
    wall_s: float,
) -> tuple[str, bool]:
    """The markdown report, and whether Breakwater passed its checks."""
    ran = [a for a in arms if results.get(a.key)]
    lines = [
        f"`POST /v1/chat/completions`, one zero-delay fakellm upstream, wrk on the same machine; "
        f"median of {args.rounds} rounds (min-max), {args.seconds:g} s per measurement after "
        f"{args.warmup:g} s of warm-up; {os.cpu_count()} cores.",
        "",
        "| metric | " + " | ".join(a.label for a in ran) + " |",
        "|---|" + "---:|" * len(ran),
    ]
    rows = [
        ("p50 latency, c=1 (ms)", "p50", "{:.2f}"),
        ("p99 latency, c=1 (ms)", "p99", "{:.2f}"),
        ("**added p50**, c=1, vs direct (ms)", "added_p50", "{:.2f}"),
        ("added p99, c=1, vs direct (ms)", "added_p99", "{:.2f}"),
        ("**requests/s, c=10**", "rps_c10", "{:,.0f}"),
        ("p99 latency, c=10 (ms)", "p99_c10", "{:.2f}"),
        ("gateway CPU per request (ms, process tree, user+sys)", "cpu", "{:.3f}"),
        ("gateway RSS after the run (MiB, process tree)", "rss", "{:.0f}"),
        ("Redis server CPU per request (ms, server-wide)", "redis_cpu", "{:.3f}"),
        (
            "journal drainer CPU per request (ms, `drain_records`, own process)",
            "drainer_cpu",
            "{:.3f}",
        ),
        ("fakellm CPU per request (ms)", "fake_cpu", "{:.3f}"),
    ]
    for title, name, fmt in rows:
        cells = [_cell(_metric(results, a.key, name), fmt) for a in ran]
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    errors = [
        sum(r.c1.errors + r.c10.errors for r in results[a.key]) for a in ran
    ]  # non-2xx + socket
    lines.append("| errors (non-2xx + socket), all rounds | " + " | ".join(map(str, errors)) + " |")

    ok = True
    bw = results.get("breakwater", [])
    if not bw:
        ok = False
    # Ratios of medians: Breakwater / peer.
    peers = [a for a in ran if a.key in ("litellm", "portkey", "baseline")]
    if bw and peers:
        lines += [
            "",
            "Breakwater ÷ peer (ratio of the medians; below 1 is better for latency, CPU and "
            "memory, above 1 is better for requests/s):",
            "",
            "| metric | "
            + " | ".join(f"Breakwater ÷ {p.label.split(' (')[0]}" for p in peers)
            + " |",
            "|---|" + "---:|" * len(peers),
        ]
        for title, name in (
            ("added p50, c=1", "added_p50"),
            ("added p99, c=1", "added_p99"),
            ("requests/s, c=10", "rps_c10"),
            ("CPU per request", "cpu"),
            ("RSS", "rss"),
        ):
            cells = []
            for p in peers:
                mine, theirs = _metric(results, "breakwater", name), _metric(results, p.key, name)
                ratio = _med(mine) / _med(theirs) if mine and theirs and _med(theirs) else None
                cells.append("—" if ratio is None else f"{ratio:.2f}x")
            lines.append(f"| {title} | " + " | ".join(cells) + " |")

    if bw:
        lines += ["", "| target | measured | verdict |", "|---|---:|---|"]
        added = _med(_metric(results, "breakwater", "added_p50"))
        verdict = "met" if added <= TARGET_ADDED_P50_MS else "**missed**"
        lines.append(f"| added p50 <= {TARGET_ADDED_P50_MS} ms | {added:.2f} ms | {verdict} |")
        rps = _med(_metric(results, "breakwater", "rps_c10"))
        for key, target in (("litellm", TARGET_X_LITELLM), ("portkey", TARGET_X_PORTKEY)):
            peer = _metric(results, key, "rps_c10") if results.get(key) else []
            name = {"litellm": "LiteLLM", "portkey": "Portkey"}[key]
            if not peer:
                lines.append(f"| throughput >= {target:g}x {name} | — | not measured |")
                continue
            ratio = rps / _med(peer)
            verdict = "met" if ratio >= target else "**missed**"
            lines.append(f"| throughput >= {target:g}x {name} | {ratio:.2f}x | {verdict} |")

    lines += ["", "Checks:"]
    for a in ran:
        problems = [p for r in results[a.key] for p in r.problems]
        lines.append(f"- {a.label}: " + ("; ".join(problems) if problems else "all passed"))
        if a.key == "breakwater" and problems:
            ok = False
    for key, reason in skipped.items():
        lines.append(f"- {key}: **skipped**: {reason}")
    lines += ["", "Per round (p50 / p99 ms at c=1, req/s at c=10, CPU ms/req, RSS MiB):", ""]
    for a in ran:
        per = " | ".join(
            f"{r.c1.p50_ms:.2f} / {r.c1.p99_ms:.2f}, {r.c10.rps:,.0f}"
            + (f", {r.cpu_ms:.3f}, {r.rss_mib:.0f}" if r.cpu_ms is not None and r.rss_mib else "")
            for r in results[a.key]
        )
        lines.append(f"- {a.label}: {per}")
    lines += ["", "Versions:"]
    for a in ran:
        if a.version:
            lines.append(f"- {a.label}: {a.version}")
    if load:
        lines.append(
            f"\n1-min load average: {load_edges[0]:.2f} before, {load_edges[1]:.2f} after; during "
            f"the rounds min {min(load):.2f}, median {_med(load):.2f}, max {max(load):.2f} "
            f"({len(load)} samples; this benchmark alone keeps about 2 busy: gateway, fakellm, "
            f"wrk). Wall time {wall_s:.0f} s."
        )
    return "\n".join(lines), ok


# --- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--peers",
        action="store_true",
        default=os.environ.get("BENCH_PEERS", "") == "1",
        help="also LiteLLM and Portkey, installed into var/bench/ (default: BENCH_PEERS=1)",
    )
    parser.add_argument("--seconds", type=float, default=10.0, help="per measurement (default 10)")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up before each (default 2)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--profile",
        type=float,
        metavar="SECONDS",
        help="instead of the rounds: run Breakwater under wrk -c10 for this long, twice (plain, "
        "then with cProfile on its event loop), and print its CPU by thread and its hotspots",
    )
    parser.add_argument(
        "--redis-url",
        default=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/11"),
        help="Redis database for Breakwater's state, flushed between rounds: an empty one "
        "(default: BENCH_REDIS_URL or redis://127.0.0.1:6379/11)",
    )
    parser.add_argument(
        "--profile-out",
        dest="keep",
        type=Path,
        metavar="FILE",
        help="with --profile: also keep the cProfile stats here (for pstats or snakeviz)",
    )
    parser.add_argument(
        "--source",
        type=Path,
        default=ROOT,
        help="the Breakwater tree to serve, e.g. a `git archive` export of a commit while the "
        "working tree is being edited (default: this checkout; the venv is this checkout's)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help="also serve this Breakwater tree (e.g. `git archive HEAD` exported to DIR) as an "
        "arm of its own, interleaved with the others: an A/B of a change in one run",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL") or None,
        help="scratch database for Breakwater (migrated; default: SQLite in a temp dir)",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 120 or not 1 <= args.warmup <= 30 or not 1 <= args.rounds <= 9:
        parser.error("--seconds 1..120, --warmup 1..30, --rounds 1..9")
    if args.profile is not None and not 3 <= args.profile <= 120:
        parser.error("--profile: 3..120 seconds")
    if not (args.source / "manage.py").is_file():
        parser.error(f"--source: no manage.py in {args.source}")
    if args.baseline is not None and not (args.baseline / "manage.py").is_file():
        parser.error(f"--baseline: no manage.py in {args.baseline}")
    if not re.match(r"^(redis|rediss|unix)://", args.redis_url):
        parser.error(f"--redis-url: expected redis://, rediss:// or unix://, got {args.redis_url}")

    def _term(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _term)
    signal.signal(signal.SIGINT, _term)  # even when started with SIGINT ignored (`cmd &`)
    signal.signal(signal.SIGALRM, _term)
    atexit.register(_stop_all)

    if reason := common.ensure_wrk():
        print(f"gateway comparison skipped: {reason}", file=sys.stderr)
        return 0
    arms: list[Arm] = [Direct(), Breakwater(args.source.resolve())]
    if args.baseline is not None and not args.profile:
        arms.append(Breakwater(args.baseline.resolve(), baseline=True))
    if args.peers and not args.profile:
        arms += [LiteLLM(), Portkey()]
    # Hard bound: installs, then per round and arm a start-up, the sanity request, 2 warm-ups,
    # 2 measurements and a stop.
    install = sum(INSTALL_TIMEOUT_S.values()) if args.peers else 0
    per_arm = sum(START_TIMEOUT_S.get(a.key, 0) for a in arms) + len(arms) * (
        2 * (args.seconds + args.warmup) + 45
    )
    signal.alarm(int(install + args.rounds * per_arm + 300))

    started = time.monotonic()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bw-bench-gateways-"))
    results: dict[str, list[Round]] = {a.key: [] for a in arms}
    skipped: dict[str, str] = {}
    sampler = LoadSampler()
    redis_claimed = False
    try:
        fake, fake_url = start_fakellm(tmp / "fakellm.log", args.source)
        _claim_redis(args.redis_url)
        redis_claimed = True
        ctx = Context(tmp, fake_url, fake.pid, args.redis_url, args.database_url)
        for arm in list(arms):
            try:
                arm.prepare(ctx)
            except Skipped as exc:
                skipped[arm.label] = str(exc)
                arms.remove(arm)
                print(f"{arm.label}: skipped: {exc}", file=sys.stderr, flush=True)
        if args.profile:
            breakwater = next(a for a in arms if isinstance(a, Breakwater))
            print(profile_breakwater(breakwater, ctx, args.profile, args.warmup, 25, args.keep))
            return 0
        with sampler:
            for i in range(args.rounds):
                k = i % len(arms)
                for arm in arms[k:] + arms[:k]:
                    log = tmp / f"{arm.key}-{i + 1}.log"
                    try:
                        r = measure(arm, ctx, args.seconds, args.warmup, log)
                    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                        if arm.key in ("direct", "breakwater", "baseline"):
                            raise
                        skipped[arm.label] = f"round {i + 1}: {exc}"[:800]
                        print(f"{arm.label}: dropped: {exc}", file=sys.stderr, flush=True)
                        arms.remove(arm)
                        results.pop(arm.key, None)
                        continue
                    results[arm.key].append(r)
                    cpu = f"{r.cpu_ms:.3f} ms/req" if r.cpu_ms is not None else "—"
                    rss = f"{r.rss_mib:.0f} MiB" if r.rss_mib is not None else "—"
                    print(
                        f"round {i + 1} {arm.key}: c1 p50 {r.c1.p50_ms:.2f} ms, "
                        f"p99 {r.c1.p99_ms:.2f} ms; c10 {r.c10.rps:,.0f} req/s; CPU {cpu}; "
                        f"RSS {rss}; load {os.getloadavg()[0]:.2f}"
                        + (f"; PROBLEMS: {'; '.join(r.problems)}" if r.problems else ""),
                        file=sys.stderr,
                        flush=True,
                    )
    finally:
        signal.alarm(0)
        _stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
        if redis_claimed:
            with contextlib.suppress(Exception):
                _reset_redis(args.redis_url)
                client = _redis(args.redis_url)
                client.flushdb()
                client.close()
    text, ok = report(
        arms,
        results,
        skipped,
        args,
        sampler.samples,
        (load_before, os.getloadavg()[0]),
        time.monotonic() - started,
    )
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
