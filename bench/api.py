"""API latency benchmark: gunicorn serving /health/live and /health on a real PostgreSQL.

Prints requests/s and p50/p95/p99 latency per endpoint, measured by keep-alive clients
in threads of this process (so the figures include the client's share of two cores).

    python bench/api.py [requests-per-endpoint]
"""

from __future__ import annotations

import http.client
import subprocess
import sys
import threading
import time

from common import ROOT, percentile, setup_django, start_database

from ordinaut.embedded import free_port

CLIENTS = 4


def hammer(port: int, path: str, count: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        mine = []
        for _ in range(n):
            start = time.perf_counter()
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{path} answered {response.status}")
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(count // CLIENTS,)) for _ in range(CLIENTS)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, time.perf_counter() - started


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 4000
    server, url = start_database()
    port = free_port()
    try:
        env = setup_django(url)
        web = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "ordinaut.wsgi", "-b", f"127.0.0.1:{port}",
             "--workers", "2", "--threads", "2", "--log-level", "warning"],
            env=env, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while True:
            try:
                http.client.HTTPConnection("127.0.0.1", port, timeout=1).request("GET", "/")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        print(f"{'endpoint':<14} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}")
        for path in ["/health/live", "/health"]:
            hammer(port, path, 200)  # warm-up: connections, imports
            latencies, elapsed = hammer(port, path, count)
            ms = [value * 1000 for value in latencies]
            print(
                f"{path:<14} {len(ms) / elapsed:>8.0f} {percentile(ms, 50):>8.2f} "
                f"{percentile(ms, 95):>8.2f} {percentile(ms, 99):>8.2f}",
                flush=True,
            )
        web.terminate()
        web.wait(timeout=30)
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
