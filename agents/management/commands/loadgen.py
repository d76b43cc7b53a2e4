from __future__ import annotations

import asyncio
import contextlib
import json
import time
import urllib.request
from pathlib import Path
from typing import IO, Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.devtools.loadgen import LoadStats, run_load


def ensure_loadgen_key() -> str:
    """A fresh execute-scope key for this run (keys are stored hashed; we cannot reuse one)."""
    from agents.access.services import api_key_create

    return api_key_create(name="loadgen", scopes=["execute"], actor="system:loadgen").plaintext


def wait_ready(base_url: str, timeout_s: float) -> bool:
    """Whether ``base_url``/readyz answered 200 within ``timeout_s`` (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            # handle() accepts only an http(s) --url
            with urllib.request.urlopen(f"{base_url}/readyz", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


class Command(BaseCommand):
    help = "Send demo/load traffic (the reference deployment's mix) through the execute API."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--rate", type=float, default=5.0, help="executions per second")
        parser.add_argument("--duration", type=float, default=60.0, help="seconds (0 = forever)")
        parser.add_argument("--url", default="http://127.0.0.1:8000")
        parser.add_argument("--key", default=None, help="API key (default: create one)")
        parser.add_argument("--agents", default="", help="comma-separated subset")
        parser.add_argument("--seed", type=int, default=None)
        parser.add_argument(
            "--record",
            type=Path,
            default=None,
            metavar="FILE",
            help="write one JSON line per request (its id, status, execution id, latency)",
        )
        parser.add_argument(
            "--retries",
            type=int,
            default=0,
            help="with --record: resend a REST request that got no answer, same Idempotency-Key",
        )
        parser.add_argument("--run-id", default="lg", help="with --record: request id prefix")
        parser.add_argument(
            "--wait-ready",
            type=float,
            default=0.0,
            metavar="S",
            help="first wait up to S seconds for URL/readyz to answer 200",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["rate"] <= 0 or options["rate"] > 10_000:
            raise CommandError("--rate: must be > 0 and <= 10000")
        if options["duration"] < 0:
            raise CommandError("--duration: must be >= 0")
        if not 0 <= options["wait_ready"] <= 3600:
            raise CommandError("--wait-ready: must be between 0 and 3600 seconds")
        if options["retries"] < 0 or options["retries"] > 10:
            raise CommandError("--retries: must be between 0 and 10")
        if options["retries"] and options["record"] is None:
            raise CommandError("--retries: needs --record (retried requests carry their id)")
        run_id = options["run_id"]
        if not run_id or len(run_id) > 64 or not run_id.replace("-", "").isalnum():
            raise CommandError("--run-id: letters, digits and '-', at most 64 characters")
        base_url = options["url"].rstrip("/")
        if not base_url.startswith(("http://", "https://")):
            raise CommandError(f"--url: expected http://HOST:PORT or https://..., got {base_url!r}")
        if options["wait_ready"] and not wait_ready(base_url, options["wait_ready"]):
            raise CommandError(
                f"--wait-ready: {base_url}/readyz not ready in {options['wait_ready']:g} s"
            )
        out: IO[str] | None = None
        if options["record"] is not None:
            try:
                out = options["record"].open("w", buffering=1)
            except OSError as exc:
                raise CommandError(f"--record: cannot write {options['record']}: {exc}") from exc
        key = options["key"] or ensure_loadgen_key()
        agents = [a for a in options["agents"].split(",") if a] or None
        stats = LoadStats()

        def record(entry: dict[str, Any]) -> None:
            assert out is not None
            out.write(json.dumps(entry, separators=(",", ":")) + "\n")

        try:
            with contextlib.suppress(KeyboardInterrupt):
                asyncio.run(
                    run_load(
                        base_url=base_url,
                        api_key=key,
                        rate=options["rate"],
                        duration_s=options["duration"] or None,
                        agents=agents,
                        seed=options["seed"],
                        stats=stats,
                        record=record if out is not None else None,
                        run_id=run_id,
                        retries=options["retries"],
                    )
                )
        finally:
            if out is not None:
                out.close()
        self.stdout.write(stats.summary())
