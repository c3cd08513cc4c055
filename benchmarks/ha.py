"""The `ha` entry of `python -m benchmarks`: the README's high-availability topology
(tests/support/ha_stack.py: two API replicas on Redis, a services process, two dispatchers, two
webhooks) on this machine, measured as the single-server entries are.

- latency: alerts posted to the two webhooks in turn, each from its 202 to the simulator
  receiving the 4th provider call; baseline: the same 4 invokes issued directly, in this run.
- recovery: a burst of alerts posted to both webhooks, one part SIGKILLed after the third post
  (fault 1: API replica api-a; fault 2: dispatcher-1), and the seconds from the kill to the last
  acknowledgement of the whole burst. Posts the webhook does not accept are posted again to the
  other webhook, as a caller with two addresses does. The killed part is started again after.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from benchmarks import measure
from tests.support.ha_stack import HAStack, running_ha_stack

LATENCY_SAMPLES = 20
BURST = 8
FAULT_AFTER_POSTS = 3
SETTLE_SECONDS = 300.0  # a dead dispatcher's runs wait 90 s of heartbeat silence, then resume
FAULTS = {"api_replica_killed": "api-a", "dispatcher_killed": "dispatcher-1"}


@dataclass
class _Entry:
    """What measure.Bench reads of a stack: the webhook it posts to changes between posts."""

    webhook_secret: str
    simulator_url: str
    webhook_url: str = ""


def run(directory: Path) -> dict[str, object]:
    """Stands up the HA stack (logs in `directory`), measures, and stops it."""
    with running_ha_stack(directory=directory) as ha:
        os.environ.update(ha.app_environment())
        entry = _Entry(ha.webhook_secret, ha.simulator_url)
        bench = measure.Bench(entry)  # type: ignore[arg-type]  # only the webhook and simulator are read
        try:
            webhooks = [ha.webhook_urls["webhook-1"], ha.webhook_urls["webhook-2"]]
            for url in webhooks:  # warm-up, not counted
                entry.webhook_url = url
                bench.alert_latency()
            latency = []
            for index in range(LATENCY_SAMPLES):
                entry.webhook_url = webhooks[index % 2]
                latency.append(bench.alert_latency(pause=random.uniform(0.2, 1.0)))
            baseline = [bench.direct_fanout() for _ in range(LATENCY_SAMPLES)]
            p50, p95, direct = (measure.percentile(50, latency), measure.percentile(95, latency),
                                measure.percentile(50, baseline))
            print(f"ha latency: p50 {p50:.3f} s, p95 {p95:.3f} s (direct 4 invokes {direct:.3f} s)", flush=True)
            recovery = {}
            for name, part in FAULTS.items():
                recovery[name] = _recovery(bench, entry, ha, part)
                print(f"ha {name}: last acknowledgement {recovery[name]:.1f} s after the kill", flush=True)
        finally:
            bench.close()
    return {"latency": {"p50_s": p50, "p95_s": p95, "baseline_p50_s": direct, "ratio_p50": round(p50 / direct, 2)},
            "recovery_s": {name: round(seconds, 1) for name, seconds in recovery.items()}}


def _recovery(bench: measure.Bench, entry: _Entry, ha: HAStack, part: str) -> float:
    created = [bench.new_event() for _ in range(BURST)]
    killed_at = 0.0
    with ThreadPoolExecutor(BURST) as pool:
        futures = []
        for index, (event_id, _) in enumerate(created):
            if index == FAULT_AFTER_POSTS:
                ha.kill(part)
                killed_at = time.time()
            futures.append(pool.submit(_post, ha, event_id, index % 2))
            time.sleep(0.1)
        for future in futures:
            future.result()
    try:
        last = max(_last_acknowledgement(bench, tag) for _, tag in created)
    finally:
        ha.restart(part)
    return last - killed_at


def _post(ha: HAStack, event_id: uuid.UUID, first: int) -> None:
    from deployments.trigger import post_event

    webhooks = [ha.webhook_urls["webhook-1"], ha.webhook_urls["webhook-2"]]
    deadline = time.monotonic() + 60
    attempt = first
    while True:
        try:
            status, answer = post_event(webhooks[attempt % 2], event_id, ha.webhook_secret)
        except httpx.HTTPError as error:
            status, answer = 0, {"detail": repr(error)}
        if status == 202:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"event {event_id} not accepted within 60 s: {status} {answer}")
        attempt += 1
        time.sleep(0.5)


def _last_acknowledgement(bench: measure.Bench, tag: str) -> float:
    """When the simulator answered the last of the event's 4 networks with success."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        acknowledged: dict[str, float] = {}
        for record in bench.calls(tag):
            if record["outcome"] == "ok" and record["responded_at"]:
                network = record["function"].split("-")[0]
                acknowledged[network] = measure.at(record["responded_at"])
        if len(acknowledged) == len(measure.PROVIDERS):
            return max(acknowledged.values())
        if time.monotonic() > deadline:
            raise TimeoutError(f"{tag}: acknowledged by {sorted(acknowledged)} after {SETTLE_SECONDS} s")
        time.sleep(0.2)


