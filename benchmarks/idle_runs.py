"""`python -m benchmarks.idle_runs`: what a run waiting between retries costs the warm dispatcher,
the measurement behind MAX_HELD in deployments/dispatcher.py.

It starts the stack (`benchmarks/stack.py`) and `broadcasts dispatcher`, makes EE fail on both
routes, and creates alert runs to all four networks in steps. Once every run of a step is
retrying EE (the other three acknowledged; the run asleep between retries, on the production
schedule), it reads the dispatcher process's resident memory, threads and open TCP connections
(to the Prefect API and to PostgreSQL) from /proc, and prints each step with what one waiting run
added. Nothing is asserted.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from benchmarks.stack import BROADCASTS, running_stack

STEPS = [0, 25, 50, 100]
SETTLE_SECONDS = 5.0


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def sample(pid: int, api_port: int) -> dict[str, int]:
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    remote_ports: list[int] = []
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[9] in inodes and fields[3] == "01":  # ESTABLISHED
                remote_ports.append(int(fields[2].rsplit(":", 1)[1], 16))
    return {"rss_kib": int(status["VmRSS"].split()[0]), "threads": int(status["Threads"]),
            "api_connections": remote_ports.count(api_port), "postgres_connections": remote_ports.count(5432)}


def main() -> int:
    signal.signal(signal.SIGTERM, _terminate)
    with running_stack() as (stack, exits):
        os.environ.update(stack.app_environment())  # before anything reads settings or imports prefect
        from prefect.client.orchestration import get_client

        from benchmarks.measure import Bench
        from broadcasts.db import unit_of_work
        from broadcasts.status import event_status
        from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT, idempotency_key
        from deployments.definitions import register_warm_deployments

        register_warm_deployments()
        dispatcher = stack.start(exits, "dispatcher", [BROADCASTS, "dispatcher"], dict(os.environ))
        dispatcher.wait_for_line("dispatching:", 180)
        bench = Bench(stack)
        for route in ("ee-1-proxy", "ee-2-proxy"):
            bench.simulator.post("/_simulator/faults", json={"function": route, "http_status": 500,
                                                              "times": 1_000_000}).raise_for_status()
        api_port = int(stack.api_url.rsplit(":", 1)[1].split("/")[0])

        def waiting(event_id: object) -> bool:
            with unit_of_work(bench.engine) as session:
                found = {s.provider: s for s in event_status(session, event_id)}
            ee = found.get("ee")
            return ee is not None and ee.status == "returned-error" and ee.attempts >= 2 and all(
                found.get(p) is not None and found[p].status == "returned-ack" for p in ("three", "o2", "vodafone"))

        events: list[object] = []
        rows = []
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
            for step in STEPS:
                while len(events) < step:
                    event_id, _ = bench.new_event()
                    events.append(event_id)
                    client.create_flow_run_from_deployment(
                        deployment.id, parameters={"broadcast_event_id": str(event_id)},
                        idempotency_key=idempotency_key(event_id))
                deadline = time.monotonic() + 600
                while not all(waiting(e) for e in events) and time.monotonic() < deadline:
                    time.sleep(1)
                time.sleep(SETTLE_SECONDS)
                found = sample(dispatcher.popen.pid, api_port)
                rows.append((step, found))
                print(f"{step:4d} waiting runs: {found}", flush=True)
        bench.close()
    base = rows[0][1]
    print("\nwaiting runs | RSS MiB | threads | API conns | PG conns | per run: KiB, threads")
    for step, found in rows:
        per = (lambda key: (found[key] - base[key]) / step if step else 0.0)
        print(f"{step:12d} | {found['rss_kib'] / 1024:7.1f} | {found['threads']:7d} | {found['api_connections']:9d} "
              f"| {found['postgres_connections']:8d} | {per('rss_kib'):.0f}, {per('threads'):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
