"""`broadcasts send-event` is an operator's explicit re-send: unlike the automatic runs, it sends a
provider that ended technical-failure again, with the identifier it already has."""

from __future__ import annotations

import pytest

from broadcasts import dispatch
from broadcasts.cbc_proxy import CBCProxy
from broadcasts.errors import UnexpectedError
from broadcasts.settings import get_settings
from tests.broadcasts.test_dispatch_records import ExplodingLambda
from tests.factories import make_alert
from tests.flows.helpers import calls_for, statuses


def test_send_event_replays_a_provider_that_ended_technical_failure(cli, engine, sim, prefect_server):
    _, _, event_id = make_alert(engine)
    with pytest.raises(UnexpectedError):
        dispatch.send_once(engine, CBCProxy(ExplodingLambda()), event_id, "ee", headline="h",
                                  enabled=get_settings().enabled_cbcs)
    identifier = statuses(engine, event_id)["ee"].identifier

    result = cli("send-event", str(event_id))

    assert result.exit_code == 0, result.output
    assert {p: s.status for p, s in statuses(engine, event_id).items()} == {"ee": "returned-ack", "vodafone": "returned-ack"}
    assert [c["function"] for c in calls_for(sim, identifier)] == ["ee-1-proxy"]
