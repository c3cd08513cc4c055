"""Proxy outages, through the real flows (in-process, against the test Prefect server, the test
database and the simulator):

- the primary route down for every call: every network is acknowledged through its failover in
  the same attempt, with no Prefect task retry;
- both routes down for the first k attempts: the attempts are spaced by the (scaled) retry
  schedule, within a tolerance, and attempt k+1 is acknowledged under the same identifier.
"""

from __future__ import annotations

from datetime import datetime

import pytest

from broadcasts.retry import scaled_delays
from tests.factories import make_alert
from tests.flows.helpers import calls_for, provider_message_count, run_event, statuses

pytestmark = [pytest.mark.faults, pytest.mark.prefect, pytest.mark.simulator, pytest.mark.usefixtures("prefect_server")]

PROVIDERS = ["ee", "three", "o2", "vodafone"]
SCALE = 0.1
# More than this on top of the scheduled delay would be a wait the schedule does not explain, such
# as the unscaled delays (1, 2, 4 s). Not a timing target (`make bench` measures retry fidelity): a
# loaded machine adds up to about a second (1.28 s seen with three test workers).
TOLERANCE_SECONDS = 2.0


def _time(call: dict) -> datetime:
    return datetime.fromisoformat(call["received_at"])


def test_the_first_lambda_down_for_every_call_fails_over_in_the_first_attempt_for_every_network(configure, engine, sim):
    configure(BROADCAST_RETRY_DELAY_SCALE=str(SCALE))
    for provider in PROVIDERS:
        sim.fault(f"{provider}-1-proxy", http_status=500)  # no `times`: down for every call
    _, _, event_id = make_alert(engine)

    assert run_event(event_id).is_completed()

    found = statuses(engine, event_id)
    assert provider_message_count(engine, event_id) == 4
    for provider in PROVIDERS:
        status = found[provider]
        acks = [h for h in status.history if h.status == "returned-ack"]
        assert status.status == "returned-ack", f"{provider}: {status}"
        assert [(h.attempt, h.route) for h in acks] == [(1, f"{provider}-2-proxy/cbc_a")], f"{provider}: {status.history}"
        assert status.attempts == 1, f"{provider} needed {status.attempts} attempts: a task retry happened"
        calls = calls_for(sim, status.identifier)
        assert [(c["function"], c["payload"]["cbc_target"], c["outcome"]) for c in calls] == [
            (f"{provider}-1-proxy", "cbc_a", "http_status"), (f"{provider}-1-proxy", "cbc_b", "http_status"),
            (f"{provider}-2-proxy", "cbc_a", "ok")], f"{provider}: {calls}"
    assert len(sim.invocations()) == 12


@pytest.mark.sqlite
@pytest.mark.parametrize("failures", [{"ee": 3, "three": 1, "o2": 2, "vodafone": 0}])
def test_both_routes_down_for_k_attempts_retries_on_the_scaled_schedule_then_acks_with_one_identifier(
        configure, engine, sim, failures):
    configure(BROADCAST_RETRY_DELAY_SCALE=str(SCALE))
    for provider, k in failures.items():
        if k:
            sim.fault(f"{provider}-1-proxy", http_status=503, times=2 * k)
            sim.fault(f"{provider}-2-proxy", function_error="Unhandled", times=2 * k)
    _, _, event_id = make_alert(engine)

    assert run_event(event_id).is_completed()

    found = statuses(engine, event_id)
    schedule = scaled_delays(SCALE)
    for provider, k in failures.items():
        status = found[provider]
        assert status.status == "returned-ack" and status.attempts == k + 1, f"{provider} (k={k}): {status}"
        assert [h.attempt for h in status.history if h.status == "returned-ack"] == [k + 1], status.history
        calls = calls_for(sim, status.identifier)
        assert len(calls) == 4 * k + 1, f"{provider} (k={k}): {[c['function'] for c in calls]}"
        assert {c["payload"]["identifier"] for c in calls} == {str(status.identifier)}
        # Each failed attempt is four calls, one per route; the wait runs from its last answer.
        calls = sorted(calls, key=lambda c: c["received_at"])
        firsts = [(c["function"], c["payload"]["cbc_target"]) for c in calls[::4]]
        assert firsts == [(f"{provider}-1-proxy", "cbc_a")] * (k + 1), firsts
        gaps = [(_time(calls[4 * n]) - datetime.fromisoformat(calls[4 * n - 1]["responded_at"])).total_seconds()
                for n in range(1, k + 1)]
        for n, (gap, delay) in enumerate(zip(gaps, schedule)):
            assert delay <= gap <= delay + TOLERANCE_SECONDS, (
                f"{provider}: retry {n} came {gap:.3f} s after attempt {n + 1} ended; the schedule says {delay:.3f} s "
                f"(+{TOLERANCE_SECONDS} s); all gaps {gaps}")
    assert provider_message_count(engine, event_id) == 4
    assert len(sim.invocations()) == sum(4 * k + 1 for k in failures.values())
