"""A small TCP round-robin in front of several ``serve`` processes: a Kubernetes Service's job.

Each client connection goes to the next backend in turn and stays there (L4, as kube-proxy
does: keep-alive requests follow their connection). A backend that refuses the connection is
skipped, and left out for ``--down-s`` seconds, so a killed ``serve`` costs only the requests in
flight on it (what a Service does once the pod's endpoint is gone). Bytes are copied both ways
until either side closes; a client whose backend died is closed. Nothing here parses HTTP.

    python -m bench.scale.proxy --port 8000 --backend 127.0.0.1:8001 --backend 127.0.0.1:8002

Prints ``proxy listening on http://HOST:PORT`` when ready; SIGTERM stops it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time

CHUNK = 65536


class RoundRobin:
    def __init__(self, backends: list[tuple[str, int]], down_s: float) -> None:
        self.backends = backends
        self.down_s = down_s
        self.next = 0
        self.down_until = [0.0] * len(backends)
        self.connections = [0] * len(backends)  # accepted per backend (for the log line)

    def order(self) -> list[int]:
        """Backends to try for a new connection: the next in turn first, those marked down
        last (they are still tried when every backend is down)."""
        n = len(self.backends)
        start, self.next = self.next, (self.next + 1) % n
        turn = [(start + i) % n for i in range(n)]
        now = time.monotonic()
        return [i for i in turn if self.down_until[i] <= now] + [
            i for i in turn if self.down_until[i] > now
        ]

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for i in self.order():
            host, port = self.backends[i]
            try:
                pair = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=2)
            except (OSError, TimeoutError):
                self.down_until[i] = time.monotonic() + self.down_s
                continue
            self.down_until[i] = 0.0
            self.connections[i] += 1
            return pair
        return None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
    except (OSError, ConnectionError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            if writer.can_write_eof():
                writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()


def handler(rr: RoundRobin):  # type: ignore[no-untyped-def]
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        pair = await rr.connect()
        if pair is None:
            await _close(client_w)
            return
        backend_r, backend_w = pair
        up = asyncio.create_task(_pipe(client_r, backend_w))
        down = asyncio.create_task(_pipe(backend_r, client_w))
        # The response side ending (the backend closed, or died) ends the connection.
        await down
        up.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await up
        await _close(backend_w)
        await _close(client_w)

    return handle


def _backend(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


async def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--backend", type=_backend, action="append", required=True)
    parser.add_argument("--down-s", type=float, default=1.0)
    args = parser.parse_args(argv)
    rr = RoundRobin(args.backend, args.down_s)
    server = await asyncio.start_server(handler(rr), args.host, args.port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"proxy listening on http://{args.host}:{args.port}", flush=True)
    async with server:
        await stop.wait()
    print(f"connections per backend: {rr.connections}", flush=True)


if __name__ == "__main__":
    try:
        import uvloop
    except ImportError:
        asyncio.run(main())
    else:
        uvloop.run(main())
    sys.exit(0)
