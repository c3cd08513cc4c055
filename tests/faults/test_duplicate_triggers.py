"""Duplicate triggers against `broadcasts serve` with its webhook: 20 concurrent signed posts for
one event, and a UI-style Retry of its run while it is still running, start one run and send one
provider message, with exactly one proxy call, per network."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import AwaitingRetry

from deployments.trigger import post_event
from tests.deployments.serving import serving, wait_for_runs
from tests.factories import make_alert
from tests.flows.helpers import provider_message_count, statuses
from tests.support.processes import free_port

pytestmark = [
    pytest.mark.faults, pytest.mark.prefect, pytest.mark.simulator, pytest.mark.long(20),
    pytest.mark.sqlite,  # concurrent webhook reads, then two runs' sends of one event, on the SQLite locks
]

PROVIDERS = ["ee", "three", "o2", "vodafone"]
SECRET = "duplicate-triggers-secret-0123456789"
HOLD_SECONDS = 4.0  # how long ee's proxy takes to answer: the run is Running meanwhile


def _wait_for(condition, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}")


def test_twenty_concurrent_posts_and_a_retry_while_running_send_once_per_network(
        prefect_server, configure, engine, sim, monkeypatch):
    monkeypatch.setenv("WEBHOOK_SECRET", SECRET)
    configure(CBC_PROXY_READ_TIMEOUT="10")  # ee's slow answer is slow, not a timeout
    sim.fault("ee-1-proxy", delay_seconds=HOLD_SECONDS, times=1)
    port = free_port()
    with serving("--webhook-port", str(port), webhook=True) as served:
        _, _, event_id = make_alert(engine)
        with ThreadPoolExecutor(20) as pool:
            answers = list(pool.map(lambda _: post_event(f"http://127.0.0.1:{port}", event_id, SECRET), range(20)))
        assert Counter(status for status, _ in answers) == Counter({202: 20}), answers
        run_ids = {answer["flow_run_id"] for _, answer in answers}
        assert len(run_ids) == 1, f"20 posts for one event started {len(run_ids)} runs: {sorted(run_ids)}"
        [run_id] = run_ids

        # While ee's call is held, the run is Running: press "Retry" on it as the UI would.
        _wait_for(lambda: [c for c in sim.invocations("ee-1-proxy") if c["outcome"] == "pending"], 60,
                  "ee's held call" + served.text())
        with get_client(sync_client=True) as client:
            assert client.read_flow_run(uuid.UUID(run_id)).state.type == StateType.RUNNING
            answer = client.set_flow_run_state(uuid.UUID(run_id), AwaitingRetry())
        retry_accepted = answer.status == SetStateStatus.ACCEPT
        print(f"\nUI retry while running: {answer.status.value} {answer.details}")

        states = wait_for_runs([run_id], 90)
        assert states == {run_id: "COMPLETED"}, served.text()[-3000:]
        # A second post after all this still answers the same run.
        status, again = post_event(f"http://127.0.0.1:{port}", event_id, SECRET)
        assert (status, again.get("flow_run_id")) == (202, run_id), again

    found = statuses(engine, event_id)
    assert {p: s.status for p, s in found.items()} == dict.fromkeys(PROVIDERS, "returned-ack")
    assert provider_message_count(engine, event_id) == 4
    calls = Counter(c["function"] for c in sim.invocations())
    assert calls == Counter({f"{p}-1-proxy": 1 for p in PROVIDERS}), (
        f"the Retry was {'accepted' if retry_accepted else f'refused ({answer.status.value})'}; "
        f"proxy calls: {dict(calls)}")
    identifiers = {c["payload"]["identifier"] for c in sim.invocations()}
    assert identifiers == {str(s.identifier) for s in found.values()}
    if not retry_accepted:
        # Refused: it must have been refused outright, leaving the run to finish as it was.
        assert answer.status in (SetStateStatus.REJECT, SetStateStatus.ABORT, SetStateStatus.WAIT), answer
