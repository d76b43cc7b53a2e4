"""Re-take the README's console screenshots from the demo, in headless Chromium.

    .venv/bin/python scripts/screenshots.py [--seed-executions 200000 --days 30] [--warmup 240]

Starts the demo (`manage.py demo`, as `make run` does) in a throwaway var directory on a free
port, optionally back-fills history with `manage.py seed_history` first, adds two notification
channels (a webhook to a receiver this script runs, and a Slack channel whose webhook refuses,
so the delivery log shows both outcomes), lets the demo's live traffic run for ``--warmup``
seconds (so breakers, fallbacks, incidents and their notifications have happened) while an
outage drill (``manage.py drill outage``) runs against it, signs in as the demo admin and saves
each page of ``PAGES`` to docs/screenshots/<name>.png at 1280 px wide. With ``--url`` it
photographs a running server instead (``--username``/``--password`` then required).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import http.server
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.console.browser import new_driver, wait_until  # noqa: E402
from tests.live import embedded_env, free_port, wait_http  # noqa: E402

# (path, file name): every console page a reader of the README may want to see.
PAGES = (
    ("/", "overview"),
    ("/agents/", "agents"),
    ("/budgets/", "budgets"),
    ("/incidents/", "incidents"),
    ("/slos/", "slos"),
    ("/notifications/", "notifications"),
    ("/drills/", "drills"),
)
WIDTH, MAX_HEIGHT = 1280, 2400

# The demo has no notification channels of its own (they would need receivers).
CHANNELS = """
notifications:
  - {{name: ops-webhook, kind: webhook, url: "http://127.0.0.1:{port}/breakwater/incidents"}}
  - {{name: oncall-slack, kind: slack, url: "http://127.0.0.1:9/services/T000/B000/demo",
     min_severity: major}}
"""


class _Receiver(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that takes every notification."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _manage(var_dir: Path, *args: str, stdin: str | None = None) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=embedded_env(var_dir),
        input=stdin,
        text=True,
        check=True,
        stdout=subprocess.DEVNULL,
    )


@contextlib.contextmanager
def demo(seed_executions: int, days: int) -> Iterator[tuple[str, str, Path]]:
    """A running demo with notification channels: (url, admin password, var directory)."""
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory(prefix="bw-shots-") as tmp:
        var_dir = Path(tmp)
        _manage(var_dir, "demo", "--no-serve")
        _manage(var_dir, "apply", "-f", "-", stdin=CHANNELS.format(port=receiver.server_address[1]))
        if seed_executions:
            print(f"seeding {seed_executions} executions over {days} days…", file=sys.stderr)
            _manage(
                var_dir, "seed_history", "--executions", str(seed_executions), "--days", str(days)
            )
        port = free_port()
        process = subprocess.Popen(
            [sys.executable, "manage.py", "demo", "--port", str(port)],
            cwd=ROOT,
            env=embedded_env(var_dir),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz", 60)
            yield url, (var_dir / "demo-admin-password").read_text().strip(), var_dir
        finally:
            receiver.shutdown()
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def shoot(url: str, username: str, password: str, out: Path) -> list[Path]:
    from selenium.webdriver.common.by import By

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Chromium is not installed: apt-get install chromium chromium-driver")
    driver = new_driver(chromium)
    saved = []
    try:
        driver.get(f"{url}/login/")
        driver.find_element(By.NAME, "username").send_keys(username)
        driver.find_element(By.NAME, "password").send_keys(password)
        driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait_until(driver, lambda d: "/login/" not in d.current_url)
        for path, name in PAGES:
            driver.set_window_size(WIDTH, 900)
            driver.get(url + path)
            # Live pages: wait for the socket's first snapshot, and for charts to draw.
            with contextlib.suppress(AssertionError):
                wait_until(
                    driver,
                    lambda d: d.execute_script(
                        "const s = document.querySelector('[data-live-status]');"
                        "return !s || s.hidden || s.dataset.state === 'live';"
                    ),
                    15,
                )
            time.sleep(2.5)
            height = int(driver.execute_script("return document.documentElement.scrollHeight"))
            # The whole page, not just the window (DevTools: capture beyond the viewport).
            shot = driver.execute_cdp_cmd(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {
                        "x": 0,
                        "y": 0,
                        "width": WIDTH,
                        "height": min(height, MAX_HEIGHT),
                        "scale": 1,
                    },
                },
            )
            target = out / f"{name}.png"
            target.write_bytes(base64.b64decode(shot["data"]))
            saved.append(target)
    finally:
        driver.quit()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="photograph this running server instead of a new demo")
    parser.add_argument("--username", default="admin")
    parser.add_argument("--password")
    parser.add_argument("--seed-executions", type=int, default=0)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--warmup", type=float, default=240.0, help="seconds of demo traffic")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.url:
        if not args.password:
            parser.error("--url needs --password")
        saved = shoot(args.url.rstrip("/"), args.username, args.password, args.out)
    else:
        with demo(args.seed_executions, args.days) as (url, password, var_dir):
            print(f"demo at {url}; {args.warmup:.0f} s of traffic first…", file=sys.stderr)
            started = time.monotonic()
            # One short outage drill, so /drills/ shows a finished drill with its figures.
            drill = subprocess.Popen(
                [sys.executable, "manage.py", "drill", "outage", "--url", url, "--seconds", "10"],
                cwd=ROOT,
                env=embedded_env(var_dir),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            try:
                drill.wait(timeout=max(args.warmup, 150))
            except subprocess.TimeoutExpired:
                drill.kill()
                print("the drill did not finish; /drills/ shows it running", file=sys.stderr)
            time.sleep(max(0.0, args.warmup - (time.monotonic() - started)))
            saved = shoot(url, "admin", password, args.out)
    for path in saved:
        print(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path)


if __name__ == "__main__":
    main()
