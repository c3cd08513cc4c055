"""The warm dispatcher's claim against the real test Prefect server: a Pending proposal whose reply
was lost is still our claim, another process's Pending is not, and a run cancelled between its
claim and its start is not started (tasks/claim.py, deployments/dispatcher.py)."""

from __future__ import annotations

import uuid

import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.flow_engine import run_flow
from prefect.states import Cancelled, Cancelling, Pending

from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT
from tasks.claim import propose_pending
from deployments.dispatcher import WARM_FLOWS, Dispatcher, _finish_if_cancelled
from deployments.definitions import register_warm_deployments
from deployments.prefect_api import client_settings
from tests.deployments.serving import start_run
from tests.factories import make_alert

pytestmark = pytest.mark.usefixtures("prefect_server", "alert_deployments")


@pytest.fixture(scope="module")
def alert_deployments(prefect_server):  # type: ignore[no-untyped-def]
    register_warm_deployments()


class LosesTheFirstReplyToSetState(httpx.HTTPTransport):
    """Sends every request; the first `set_state` reply is read and then lost, as when the
    connection resets after the server committed (the Prefect client then sends it again)."""

    def __init__(self) -> None:
        super().__init__()
        self.lost: list[bytes] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        if request.url.path.endswith("/set_state") and not self.lost:
            response.read()
            self.lost.append(request.content)
            response.close()
            raise httpx.ReadError("connection reset before the reply arrived", request=request)
        return response


def state_types(run_id: object) -> list[str]:
    with get_client(sync_client=True) as client:
        return [s.type.value for s in client.read_flow_run_states(run_id)]


def forget(run_id: object) -> None:
    """Nobody runs a run a test claimed by hand: end it, so no later dispatcher or resume meets it live."""
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run_id, Cancelled(message="claimed by a test"), force=True)


def test_a_claim_whose_reply_was_lost_is_still_the_dispatchers_claim(environment, engine):
    run_id = uuid.UUID(start_run(make_alert(engine)[2]))
    dispatcher = Dispatcher()  # not started: only its claim is exercised
    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
    dispatcher._flows[deployment.id] = WARM_FLOWS[SEND_EVENT_DEPLOYMENT]
    transport = LosesTheFirstReplyToSetState()
    try:
        with get_client(httpx_settings={"transport": transport}, sync_client=True) as lossy:
            claimed = dispatcher._claim(lossy, run_id)
        assert len(transport.lost) == 1, "the first reply was not lost: the test proves nothing"
        assert claimed is not None, "the run our own proposal made Pending was left to nobody"
        assert claimed.state.is_pending() and state_types(run_id) == ["SCHEDULED", "PENDING"]
    finally:
        forget(run_id)


def test_a_repeated_proposal_with_our_transition_id_is_our_claim_and_another_proposers_pending_is_not(
        environment, engine):
    ours, theirs = (uuid.UUID(start_run(make_alert(engine)[2])) for _ in range(2))
    transition_id = uuid.uuid4()
    try:
        with get_client(sync_client=True) as client:
            first = propose_pending(client, ours, transition_id)
            again = propose_pending(client, ours, transition_id)  # as the client resends a lost request
            assert first is not None and again is not None
            assert again.state_details.transition_id == transition_id
            assert state_types(ours) == ["SCHEDULED", "PENDING"], "the repeat made a second transition"

            assert client.set_flow_run_state(theirs, Pending()).state.is_pending()  # another process
            assert propose_pending(client, theirs) is None
    finally:
        forget(ours)
        forget(theirs)


def test_the_engine_does_not_start_a_run_cancelled_between_its_claim_and_its_start(environment, engine, sim):
    """Why a first attempt need not ask whether its run was cancelled (tasks/run_cancel.py)."""
    run_id = uuid.UUID(start_run(make_alert(engine)[2]))
    with client_settings(), get_client(sync_client=True) as client:
        assert propose_pending(client, run_id) is not None
        assert client.set_flow_run_state(run_id, Cancelling()).state.type.value == "CANCELLING"  # the UI's Cancel
        run = client.read_flow_run(run_id)
        run_flow(WARM_FLOWS[SEND_EVENT_DEPLOYMENT], flow_run=run, parameters=run.parameters,
                 return_type="state")
        assert sim.invocations() == [] and state_types(run_id) == ["SCHEDULED", "PENDING", "CANCELLING"]
        _finish_if_cancelled(client, run)
        assert client.read_flow_run(run_id).state.type.value == "CANCELLED"
