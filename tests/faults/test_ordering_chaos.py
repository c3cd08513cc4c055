"""Dispatch under chaos, without Prefect: random broadcasts of alert/update/cancel events, random
route failures scripted in the simulator and a random interleaving of `dispatch.send_once` calls.

Whatever the order of the calls, on the simulator's own record:
- a network never receives event N+1 of a broadcast before it acknowledged event N;
- every event ends `returned-ack` on every network (none expires here), except the alerts and
  updates of a cancelled broadcast: its cancel is written before any send, so they end
  `superseded` without a call (docs/behaviour.md §4 rule 6), and the cancel is acknowledged;
- each (event, network) is sent under exactly one identifier, across every call and retry;
- once acknowledged, calling again sends nothing.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from broadcasts import dispatch
from broadcasts.cbc_proxy import get_proxy
from broadcasts.errors import AllRoutesFailed, EarlierEventPending, NotSendable, Superseded
from broadcasts.models import utcnow
from broadcasts.payloads import cap_time
from broadcasts.settings import get_settings
from tests.factories import make_event, make_message, make_service
from tests.flows.helpers import provider_message_count, statuses

pytestmark = [pytest.mark.faults, pytest.mark.simulator]

PROVIDERS = ["ee", "three", "o2", "vodafone"]
MAX_CALLS = 600  # a bound on the whole example (calls that must wait): far above what any order needs


@dataclass(frozen=True)
class Event:
    id: uuid.UUID
    broadcast: int
    position: int  # its place in its broadcast's order (by sent_at)
    message_type: str
    sent: str  # the CAP `sent` its payloads carry


# One broadcast: an alert, 0-2 updates, and maybe a cancel (last: an update after a cancel is refused).
broadcast_shapes = st.tuples(st.integers(0, 2), st.booleans()).map(
    lambda shape: ["alert"] + ["update"] * shape[0] + (["cancel"] if shape[1] else [])
)
scenarios = st.fixed_dictionaries({
    "broadcasts": st.lists(broadcast_shapes, min_size=1, max_size=3),
    "providers": st.lists(st.sampled_from(PROVIDERS), min_size=1, max_size=3, unique=True),
    # failures per route, consumed by whichever event's call arrives first
    "faults": st.dictionaries(
        st.sampled_from([f"{p}-{route}-proxy" for p in PROVIDERS for route in (1, 2)]),
        st.integers(1, 4), max_size=8,
    ),
})


def _create(engine, shapes: list[list[str]]) -> list[Event]:  # type: ignore[no-untyped-def]
    clock = utcnow().replace(microsecond=0) - timedelta(minutes=30)
    events: list[Event] = []
    for broadcast, shape in enumerate(shapes):
        service_id = make_service(engine)
        message_id = make_message(engine, service_id)
        for position, message_type in enumerate(shape):
            clock += timedelta(seconds=7)  # every event of the example has its own whole-second `sent`
            event_id = make_event(engine, service_id, message_id, message_type=message_type, sent_at=clock)
            events.append(Event(event_id, broadcast, position, message_type, cap_time(clock)))
    return events


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# No shrinking: each example is a whole dispatch history, and the failure message names the offender.
@settings(derandomize=True, max_examples=20, deadline=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(scenario=scenarios, seed=st.integers(0, 2**32 - 1))
def test_random_failures_and_interleavings_keep_order_and_one_identifier(environment, engine, simulator, scenario, seed):
    order = random.Random(seed)  # the interleaving of the calls
    simulator.reset()
    for function, times in scenario["faults"].items():
        simulator.fault(function, http_status=500, times=times)
    providers = scenario["providers"]
    events = _create(engine, scenario["broadcasts"])
    proxy = get_proxy(get_settings())

    pending = [(e, p) for e in events for p in providers]
    acknowledged: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
    superseded: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
    cancelled = {e.broadcast for e in events if e.message_type == "cancel"}

    def expected(event: Event) -> str:
        return "superseded" if event.broadcast in cancelled and event.message_type != "cancel" else "returned-ack"

    label = {e.id: f"broadcast {e.broadcast} event {e.position} ({e.message_type} {e.id})" for e in events}
    calls = 0
    failed: dict[str, int] = defaultdict(int)

    def scripted_failures(provider: str) -> int:
        return min(scenario["faults"].get(f"{provider}-{route}-proxy", 0) for route in (1, 2))

    while pending:
        calls += 1
        assert calls <= MAX_CALLS, f"no progress after {MAX_CALLS} calls; still pending: " + ", ".join(
            f"{label[e.id]} on {p}" for e, p in pending)
        # Now and then, call a pair that is already acknowledged: it must send nothing again.
        if acknowledged and order.random() < 0.1:
            (event_id, provider), identifier = order.choice(list(acknowledged.items()))
            result = dispatch.send_once(engine, proxy, event_id, provider, enabled=providers, headline="h")
            assert (result.status, result.sent_now, result.provider_message_id) == ("returned-ack", False, identifier), (
                f"{label[event_id]} on {provider}: a call after its ack answered {result}")
            continue
        event, provider = order.choice(pending)
        try:
            result = dispatch.send_once(engine, proxy, event.id, provider, enabled=providers, headline="h")
        except EarlierEventPending:
            continue  # called again later, in the random order
        except AllRoutesFailed as error:
            # Only the scripted faults may fail a call: both routes failing uses one of each.
            failed[provider] += 1
            assert failed[provider] <= scripted_failures(provider), (
                f"{label[event.id]} on {provider} failed beyond the scripted faults: {error}")
            continue
        except Superseded as error:
            assert expected(event) == "superseded", f"{label[event.id]} on {provider} was superseded: {error}"
            superseded[(event.id, provider)] = error.provider_message_id
            pending.remove((event, provider))
            continue
        except NotSendable as error:
            pytest.fail(f"{label[event.id]} on {provider} was not sendable: {type(error).__name__}: {error}")
        assert result.status == "returned-ack", f"{label[event.id]} on {provider}: {result}"
        acknowledged[(event.id, provider)] = result.provider_message_id
        pending.remove((event, provider))

    # Every event ended as expected on every network, with one provider message each.
    ended = {**acknowledged, **superseded}
    for event in events:
        found = statuses(engine, event.id)
        assert {p: s.status for p, s in found.items()} == dict.fromkeys(providers, expected(event)), label[event.id]
        assert provider_message_count(engine, event.id) == len(providers), label[event.id]
        for provider in providers:
            assert found[provider].identifier == ended[(event.id, provider)], (
                f"{label[event.id]} on {provider}: the record's identifier is not the one acknowledged")

    # The simulator's record: map each call to its event by its `sent`, and its network by name.
    by_sent = {e.sent: e for e in events}
    record: dict[tuple[uuid.UUID, str], list[dict]] = defaultdict(list)
    for call in simulator.invocations():
        assert call["function"] is not None and isinstance(call["payload"], dict), call
        provider = call["function"].split("-")[0]
        event = by_sent.get(call["payload"].get("sent"))
        assert event is not None and provider in providers, f"a call for no event of this example: {call}"
        record[(event.id, provider)].append(call)

    for event in events:
        for provider in providers:
            received = record[(event.id, provider)]
            if expected(event) == "superseded":
                assert received == [], f"{label[event.id]} on {provider} reached the network after its cancel"
                continue
            identifiers = {c["payload"]["identifier"] for c in received}
            assert identifiers == {str(acknowledged[(event.id, provider)])}, (
                f"{label[event.id]} on {provider} was sent under {sorted(identifiers)}")
            oks = [c for c in received if c["outcome"] == "ok"]
            assert len(oks) == 1, f"{label[event.id]} on {provider} was acknowledged {len(oks)} times by the network"

    # Per network and broadcast: nothing of event N+1 arrives before the network acknowledged N.
    for provider in providers:
        for earlier, later in zip(events, events[1:]):
            if earlier.broadcast != later.broadcast or expected(earlier) == "superseded":
                continue
            [ok] = [c for c in record[(earlier.id, provider)] if c["outcome"] == "ok"]
            first = min(record[(later.id, provider)], key=lambda c: _time(c["received_at"]))
            assert _time(first["received_at"]) >= _time(ok["responded_at"]), (
                f"{provider} received {label[later.id]} at {first['received_at']} before it acknowledged "
                f"{label[earlier.id]} at {ok['responded_at']}")
