"""`python -m benchmarks` (or `make bench`): each line is a measurement, its baseline and the ratio.

1. Simulator start-up: `broadcasts simulator` until it listens, against a bare interpreter start.
   Target: under 3 s.
2. One provider send through the domain (checks, provider message, lock, proxy call, history),
   against one bare boto3 `invoke` of the same proxy: the dispatcher's own overhead.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import timedelta
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROADCASTS = str(Path(sys.executable).parent / "broadcasts")


def median_seconds(run: Callable[[], object], repeat: int) -> float:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def start_simulator(port: str = "0") -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([BROADCASTS, "simulator", "--port", port], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=ROOT)
    assert process.stdout is not None
    for line in process.stdout:
        if "listening on" in line:
            return process, line.rsplit(" ", 1)[-1].strip()
    raise RuntimeError("the simulator did not start")


def simulator_start() -> None:
    process, _ = start_simulator()
    process.terminate()
    process.wait()


def report(name: str, measured: float, baseline_name: str, baseline: float, note: str = "") -> None:
    print(f"{name:<34} {measured * 1000:9.1f} ms   {baseline_name:<26} {baseline * 1000:8.1f} ms"
          f"   ratio {measured / baseline:6.1f}x  {note}")


def main() -> None:
    interpreter = median_seconds(lambda: subprocess.run([sys.executable, "-c", "pass"], check=True), 5)
    startup = median_seconds(simulator_start, 5)
    report("simulator start-up (median of 5)", startup, "python -c pass", interpreter,
           "target < 3000 ms: " + ("met" if startup < 3 else "NOT MET"))

    process, url = start_simulator()
    try:
        with tempfile.TemporaryDirectory() as directory:
            os.environ.update(DATABASE_URL=f"sqlite:///{directory}/bench.db", CBC_PROXY_ENDPOINT_URL=url,
                              AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
            measure_send(url)
    finally:
        process.terminate()
        process.wait()


def measure_send(url: str) -> None:
    from broadcasts.cbc_proxy import get_proxy
    from broadcasts.db import get_engine, unit_of_work
    from broadcasts.dispatch import send_to_provider
    from broadcasts.events import create_event
    from broadcasts.migrate import upgrade
    from broadcasts.models import utcnow
    from broadcasts.settings import get_settings

    settings = get_settings()
    engine = get_engine(settings.database_url)
    upgrade(engine)
    proxy = get_proxy(settings)
    square = [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]

    def new_event() -> uuid.UUID:
        with unit_of_work(engine) as session:
            return create_event(session, message_type="alert", now=utcnow(), body="Flood warning",
                                polygons=[square], finishes_in=timedelta(hours=1)).broadcast_event_id

    payload = {"message_type": "test", "identifier": str(uuid.uuid4()), "message_format": "cap"}
    proxy.invoke("ee-1-proxy", payload)  # warm the connection
    bare = median_seconds(lambda: proxy.invoke("ee-1-proxy", payload), 30)
    events = [new_event() for _ in range(31)]
    send_to_provider(engine, proxy, events.pop(), "ee", headline="h", enabled=["ee"])  # warm up
    dispatch = median_seconds(lambda: send_to_provider(engine, proxy, events.pop(), "ee", headline="h", enabled=["ee"]), 30)
    report("one provider send (domain, SQLite)", dispatch, "bare boto3 invoke", bare)


if __name__ == "__main__":
    main()
