"""The measurements of `python -m benchmarks`, against a running stack (`benchmarks/stack.py`).

Every alert carries a unique tag in its text, so the simulator's records of its provider calls
are found by their payload's `description`. Times compare this process's clock with the
simulator's `received_at` (same machine, wall clock).
"""

from __future__ import annotations

import copy
import logging
import os
import statistics
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy import delete

from benchmarks.stack import Stack
from broadcasts.models import RouteAdvice
from broadcasts.providers import get_provider

PROVIDERS = ["ee", "three", "o2", "vodafone"]
PRIMARY_ROUTES = [get_provider(p).routes(second_cbc=True)[0] for p in PROVIDERS]  # each network's first
ALL_ROUTES = [f"{p}-{n}-proxy" for p in PROVIDERS for n in (1, 2)]
SQUARE = [[51.5, -0.1], [51.6, -0.1], [51.6, 0.0]]
CALL_TIMEOUT = 60.0


def at(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def percentile(percentile: int, samples: list[float]) -> float:
    if percentile == 50:
        return round(statistics.median(samples), 3)
    return round(statistics.quantiles(samples, n=100, method="inclusive")[percentile - 1], 3)


class Bench:
    def __init__(self, stack: Stack) -> None:
        from broadcasts.cbc_proxy import get_proxy
        from broadcasts.db import get_engine
        from broadcasts.settings import get_settings

        get_settings.cache_clear()
        self.stack = stack
        self.settings = get_settings()
        self.engine = get_engine(self.settings.database_url)
        self.proxy = get_proxy(self.settings)
        self.simulator = httpx.Client(base_url=stack.simulator_url, timeout=30)
        self.templates: dict[str, dict[str, Any]] = {}
        self.direct = ThreadPoolExecutor(4)
        self.webhook_timeouts = 0  # burst posts the webhook did not answer within 30 s

    def close(self) -> None:
        from broadcasts.db import get_engine

        self.direct.shutdown()
        self.simulator.close()
        self.engine.dispose()
        get_engine.cache_clear()

    # -- the app database and the simulator ------------------------------------------------------

    def new_event(self, providers: list[str] = PROVIDERS) -> tuple[uuid.UUID, str]:
        from broadcasts.db import unit_of_work
        from broadcasts.events import create_event
        from broadcasts.models import utcnow

        tag = uuid.uuid4().hex
        with unit_of_work(self.engine) as session:
            created = create_event(session, message_type="alert", now=utcnow(), body=f"Flood warning {tag}",
                                   polygons=[SQUARE], finishes_in=timedelta(hours=1), providers=providers)
        return created.broadcast_event_id, tag

    def calls(self, tag: str, function: str | None = None) -> list[dict[str, Any]]:
        records = self.simulator.get("/_simulator/invocations", params={"function": function} if function else None)
        records.raise_for_status()
        return [r for r in records.json()
                if isinstance(r.get("payload"), dict) and tag in str(r["payload"].get("description", ""))]

    def wait_for_calls(self, tag: str, count: int, timeout: float = CALL_TIMEOUT,
                       answered: bool = False) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.calls(tag) if r["responded_at"] or not answered]
            if len(found) >= count:
                return sorted(found, key=lambda r: r["received_at"])
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(found)} of {count} provider calls for {tag} after {timeout} s")
            time.sleep(0.02)

    def delay_all(self, seconds: float) -> None:
        for function in ALL_ROUTES:
            self.simulator.post("/_simulator/faults", json={"function": function, "delay_seconds": seconds}
                                ).raise_for_status()

    def reset_simulator(self) -> None:
        self.simulator.post("/_simulator/reset").raise_for_status()

    # -- through the webhook and `broadcasts serve` ----------------------------------------------

    def post(self, event_id: uuid.UUID) -> float:
        from deployments.trigger import post_event

        status, answer = post_event(self.stack.webhook_url, event_id, self.stack.webhook_secret)
        accepted = time.time()
        if status != 202:
            raise RuntimeError(f"the webhook answered {status}: {answer}")
        return accepted

    def post_until_accepted(self, event_id: uuid.UUID, attempts: int = 4) -> float:
        """Posts again when the webhook does not answer in time (safe: one run per event)."""
        for attempt in range(attempts):
            try:
                return self.post(event_id)
            except httpx.TimeoutException:
                self.webhook_timeouts += 1
                if attempt + 1 == attempts:
                    raise
        raise AssertionError("unreachable")

    def alert_latency(self, pause: float = 0.0, answered: bool = False) -> float:
        """Seconds from the webhook's 202 to the simulator receiving the 4th provider call (or,
        `answered`, answering it: what a slow proxy adds shows there)."""
        event_id, tag = self.new_event()
        accepted = self.post(event_id)
        found = self.wait_for_calls(tag, len(PROVIDERS), answered=answered)
        if not self.templates:
            self.templates = {r["function"]: r["payload"] for r in found}
        time.sleep(pause)
        return max(at(r["responded_at" if answered else "received_at"]) for r in found[:len(PROVIDERS)]) - accepted

    def burst_sent(self, events: int) -> float:
        """Seconds from posting `events` events at once until the simulator has received all
        their provider calls."""
        tags = [self.new_event() for _ in range(events)]
        with ThreadPoolExecutor(events) as pool:
            start = time.time()
            list(pool.map(lambda created: self.post_until_accepted(created[0]), tags))
        last = [self.wait_for_calls(tag, len(PROVIDERS))[len(PROVIDERS) - 1] for _, tag in tags]
        return max(at(r["received_at"]) for r in last) - start

    def burst(self, events: int, timeout: float = 300.0) -> float:
        """Seconds from posting `events` events at once until every provider message is acknowledged."""
        from sqlalchemy import func, select

        from broadcasts.models import RETURNED_ACK, BroadcastProviderMessage

        ids = [self.new_event()[0] for _ in range(events)]
        expected = events * len(PROVIDERS)
        query = select(func.count()).select_from(BroadcastProviderMessage).where(
            BroadcastProviderMessage.broadcast_event_id.in_(ids), BroadcastProviderMessage.status == RETURNED_ACK)
        with ThreadPoolExecutor(events) as pool:
            start = time.monotonic()
            futures = [pool.submit(self.post_until_accepted, event_id) for event_id in ids]
            for future in futures:
                future.result()
        deadline = start + timeout
        while True:
            with self.engine.connect() as connection:
                acknowledged = connection.execute(query).scalar_one()
            if acknowledged >= expected:
                return time.monotonic() - start
            if time.monotonic() > deadline:
                raise TimeoutError(f"burst: {acknowledged} of {expected} acknowledged after {timeout} s")
            time.sleep(0.1)

    # -- the baselines: the proxies called directly ----------------------------------------------

    def _payload(self, function: str, tag: str) -> dict[str, Any]:
        payload = copy.deepcopy(self.templates[function])
        payload["identifier"] = str(uuid.uuid4())
        payload["description"] = f"Flood warning {tag}"
        return payload

    def direct_fanout(self, pause: float = 0.2, answered: bool = False) -> float:
        """The 4 primary invokes in 4 threads: seconds from their start to the 4th received (or
        answered)."""
        tag = uuid.uuid4().hex
        payloads = [(route, self._payload(route.function, tag)) for route in PRIMARY_ROUTES]
        start = time.time()
        futures = [self.direct.submit(self.proxy.invoke, route, payload) for route, payload in payloads]
        for future in futures:
            future.result()
        found = self.wait_for_calls(tag, len(PROVIDERS), answered=answered)
        time.sleep(pause)
        return max(at(r["responded_at" if answered else "received_at"]) for r in found[:len(PROVIDERS)]) - start

    def direct_burst(self, invokes: int, parallel: int) -> float:
        tag = uuid.uuid4().hex
        payloads = [(route, self._payload(route.function, tag)) for _ in range(invokes // len(PRIMARY_ROUTES))
                    for route in PRIMARY_ROUTES]
        with ThreadPoolExecutor(parallel) as pool:
            start = time.monotonic()
            list(pool.map(lambda item: self.proxy.invoke(*item), payloads))
            return time.monotonic() - start

    # -- the flow in this process ----------------------------------------------------------------

    @contextmanager
    def _in_process(self) -> Iterator[Any]:
        """This process's settings for the stack's server, and the flow to call as `broadcasts
        send-event` calls it (entering the settings costs tens of milliseconds, so it is done once,
        outside the timings)."""
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

        from deployments.prefect_api import client_settings, direct_runs
        from flows.send_broadcast_event import send_broadcast_event

        for handler in logging.getLogger().handlers:  # run logs go to the server, not between the figures
            if type(handler).__name__ == "PrefectConsoleHandler":
                handler.setLevel(logging.WARNING)
        with temporary_settings(updates={PREFECT_API_URL: self.stack.api_url,
                                         PREFECT_API_AUTH_STRING: self.stack.auth_string}):
            with client_settings(), direct_runs() as prepared:
                yield prepared(send_broadcast_event)

    def inprocess_latency(self, samples: int) -> list[float]:
        """The flow called here, against the same Prefect server: call → 4th provider call."""
        with self._in_process() as send_broadcast_event:
            send_broadcast_event(str(self.new_event()[0]))  # warm-up: imports, clients, pools
            return [self._to_4th_call(lambda event_id: send_broadcast_event(str(event_id))) for _ in range(samples)]

    def direct_sends(self, samples: int) -> list[float]:
        """The in-process figure's baseline: the four sends (`dispatch.send_once`: the checks, the
        lock, the call and its record; no provider slot) in four threads with no Prefect run
        around them: start → 4th provider call."""
        def send_all(event_id: uuid.UUID) -> None:
            for future in [self.direct.submit(self._send_once, event_id, provider) for provider in PROVIDERS]:
                future.result()

        return [self._to_4th_call(send_all) for _ in range(samples)]

    def _to_4th_call(self, send: Callable[[uuid.UUID], object]) -> float:
        """Seconds from `send(event_id)` starting, for a new event, to its 4th provider call."""
        event_id, tag = self.new_event()
        start = time.time()
        send(event_id)
        found = self.wait_for_calls(tag, len(PROVIDERS))
        return at(found[len(PROVIDERS) - 1]["received_at"]) - start

    def _send_once(self, event_id: uuid.UUID, provider: str) -> None:
        from broadcasts.dispatch import send_once

        send_once(self.engine, self.proxy, event_id, provider, enabled=PROVIDERS,
                  headline=self.settings.broadcast_headline)

    def retry_gaps(self, scale: float, failures: int) -> tuple[list[float], list[float]]:
        """The waits of a provider failing `failures` attempts (all four routes), with the retry
        delays scaled by `scale`: from an attempt's last answer (its fourth route's) to the next
        attempt's first call; and the planned waits."""
        from broadcasts.retry import scaled_delays
        from broadcasts.settings import get_settings

        self.reset_simulator()
        with self.engine.begin() as connection:  # every attempt starts on ee's default first route
            connection.execute(delete(RouteAdvice).where(RouteAdvice.provider == "ee"))
        for function in ("ee-1-proxy", "ee-2-proxy"):
            self.simulator.post("/_simulator/faults", json={"function": function, "http_status": 500,
                                                            "times": 2 * failures}).raise_for_status()
        saved = os.environ.get("BROADCAST_RETRY_DELAY_SCALE")
        os.environ["BROADCAST_RETRY_DELAY_SCALE"] = str(scale)
        get_settings.cache_clear()
        try:
            event_id, tag = self.new_event(["ee"])
            with self._in_process() as send_broadcast_event:
                send_broadcast_event(str(event_id))
        finally:
            if saved is None:
                os.environ.pop("BROADCAST_RETRY_DELAY_SCALE", None)
            else:
                os.environ["BROADCAST_RETRY_DELAY_SCALE"] = saved
            get_settings.cache_clear()
        primary = sorted(at(r["received_at"]) for r in self.calls(tag, "ee-1-proxy")
                         if r["payload"].get("cbc_target") == "cbc_a")
        failover = sorted(at(r["responded_at"]) for r in self.calls(tag, "ee-2-proxy")
                          if r["payload"].get("cbc_target") == "cbc_b")
        if (len(primary), len(failover)) != (failures + 1, failures):
            raise RuntimeError(f"retry: {len(primary)} primary and {len(failover)} failover calls, "
                               f"expected {failures + 1} and {failures}")
        gaps = [next_call - failed for failed, next_call in zip(failover, primary[1:])]
        planned = scaled_delays(scale)[:failures]
        return gaps, planned

    # -- cost ------------------------------------------------------------------------------------

    def statements_per_send(self, history: int) -> tuple[float, float]:
        """Mean SQL statements of one `dispatch.send_once` (over the four providers) on a fresh event,
        with an empty history and after `history` earlier events of other broadcasts."""
        from sqlalchemy import event as sa_event

        counting = {"on": False, "n": 0}

        def count(*args: object) -> None:
            if counting["on"]:
                counting["n"] += 1

        sa_event.listen(self.engine, "before_cursor_execute", count)
        try:
            self._send_all()  # warm-up: the first send of a process prepares more
            counting["on"] = True
            empty = self._send_all(counting)
            counting["on"] = False
            self._insert_history(history)
            counting["on"] = True
            full = self._send_all(counting)
        finally:
            sa_event.remove(self.engine, "before_cursor_execute", count)
        return empty, full

    def _send_all(self, counting: dict[str, Any] | None = None) -> float:
        event_id, _ = self.new_event()
        if counting is not None:
            counting["n"] = 0
        for provider in PROVIDERS:
            self._send_once(event_id, provider)
        return round(counting["n"] / len(PROVIDERS), 2) if counting is not None else 0.0

    def _insert_history(self, events: int) -> None:
        from broadcasts.models import (
            RETURNED_ACK,
            BroadcastEvent,
            BroadcastMessage,
            BroadcastProviderMessage,
            BroadcastProviderMessageStatus,
            Service,
            utcnow,
        )

        now = utcnow()
        service = uuid.uuid4()
        areas = {"names": [], "simple_polygons": [SQUARE]}
        messages, rows, provider_messages, statuses = [], [], [], []
        for n in range(events):
            sent = now - timedelta(days=30) + timedelta(seconds=n)
            message_id, event_id, pm_id = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
            messages.append({"id": message_id, "service_id": service, "content": f"earlier {n}", "areas": areas,
                             "status": "completed", "starts_at": sent, "finishes_at": sent + timedelta(hours=1),
                             "stubbed": False, "created_at": sent})
            rows.append({"id": event_id, "service_id": service, "broadcast_message_id": message_id, "sent_at": sent,
                         "message_type": "alert", "transmitted_content": {"body": f"earlier {n}"},
                         "transmitted_areas": areas, "transmitted_sender": None, "transmitted_starts_at": sent,
                         "transmitted_finishes_at": sent + timedelta(hours=1)})
            provider = PROVIDERS[n % len(PROVIDERS)]
            provider_messages.append({"id": pm_id, "broadcast_event_id": event_id, "provider": provider,
                                      "status": RETURNED_ACK, "created_at": sent, "payload": None})
            statuses.append({"broadcast_provider_message_id": pm_id, "status": RETURNED_ACK, "created_at": sent,
                             "route": f"{provider}-1-proxy", "attempt": 1, "detail": None})
        with self.engine.begin() as connection:
            connection.execute(Service.__table__.insert(), [{"id": service, "name": "earlier", "active": True,
                                                             "restricted": False}])
            for table, values in ((BroadcastMessage, messages), (BroadcastEvent, rows),
                                  (BroadcastProviderMessage, provider_messages),
                                  (BroadcastProviderMessageStatus, statuses)):
                connection.execute(table.__table__.insert(), values)
