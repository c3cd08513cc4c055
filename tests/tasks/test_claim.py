"""The warm dispatcher's claim rules (tasks/claim.py) against a fake Prefect client: which runs are
claimed, which are left, when one is offered again, and which Pending answers are ours. The live
server's side of the same claims is in tests/deployments/test_dispatcher_claim.py."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from prefect.client.schemas import OrchestrationResult
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import SetStateStatus, StateAcceptDetails
from prefect.states import Pending, Running, Scheduled

from tasks.claim import ClaimRules, Claimed, DueSoon, Left, without_superseded

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=timezone.utc)
ALERTS = uuid.uuid4()
SOON = timedelta(seconds=1)


class Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def json(self) -> dict[str, Any]:
        return self.body


class FakeClient:
    """`read_flow_run` answers the run as given; `set_state` answers as the server would with
    `status`, and the state it reports: the proposal itself, or `standing` (another's Pending,
    or our own when it answers a repeat of our proposal)."""

    def __init__(self, run: FlowRun, status: SetStateStatus = SetStateStatus.ACCEPT,
                 standing: str | None = None) -> None:
        self.run, self.status, self.standing = run, status, standing
        self.proposals: list[dict[str, Any]] = []

    def read_flow_run(self, run_id: uuid.UUID) -> FlowRun:
        assert run_id == self.run.id
        return self.run.model_copy(deep=True)

    def request(self, method: str, path: str, path_params: dict[str, Any], json: dict[str, Any]) -> Answer:
        assert (method, path, path_params) == ("POST", "/flow_runs/{id}/set_state", {"id": self.run.id})
        self.proposals.append(json)
        proposed = json["state"]["state_details"]["transition_id"]
        state = Pending()
        state.state_details.transition_id = {"ours": uuid.UUID(proposed), "theirs": uuid.uuid4(),
                                             None: uuid.UUID(proposed)}[self.standing]
        result = OrchestrationResult(state=state, status=self.status, details=StateAcceptDetails())
        return Answer(result.model_dump(mode="json"))


def run(state: Any, deployment: uuid.UUID | None = ALERTS) -> FlowRun:
    return FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), deployment_id=deployment, state=state,
                   expected_start_time=NOW)


def claim(client: FakeClient) -> Claimed | DueSoon | Left:
    return ClaimRules({ALERTS}, SOON, now=lambda: NOW).claim(client, client.run.id)  # type: ignore[arg-type]


def test_a_due_scheduled_run_of_an_alert_deployment_is_claimed_with_one_pending_proposal():
    client = FakeClient(run(Scheduled(scheduled_time=NOW - timedelta(seconds=5))))
    decision = claim(client)
    assert isinstance(decision, Claimed) and decision.run.state.is_pending()
    assert len(client.proposals) == 1 and client.proposals[0]["force"] is False
    assert client.proposals[0]["state"]["type"] == "PENDING"


@pytest.mark.parametrize("case, made", [
    ("another deployment's run", lambda: run(Scheduled(scheduled_time=NOW), deployment=uuid.uuid4())),
    ("an ad-hoc run", lambda: run(Scheduled(scheduled_time=NOW), deployment=None)),
    ("a run already Pending", lambda: run(Pending())),
    ("a run already Running", lambda: run(Running())),
    ("a run with no state", lambda: run(None)),
    ("a run due later than soon", lambda: run(Scheduled(scheduled_time=NOW + timedelta(seconds=30)))),
])
def test_runs_the_rules_leave_are_not_proposed_to(case, made):
    client = FakeClient(made())
    assert isinstance(claim(client), Left), case
    assert client.proposals == [], f"{case}: a proposal was sent"


def test_a_run_due_within_soon_is_offered_again_when_due_not_claimed_early():
    client = FakeClient(run(Scheduled(scheduled_time=NOW + timedelta(seconds=0.4))))
    decision = claim(client)
    assert decision == DueSoon(pytest.approx(0.4)) and client.proposals == []


def test_a_scheduled_state_without_a_time_falls_back_to_the_expected_start():
    late = run(Scheduled(scheduled_time=NOW))
    late.state.state_details.scheduled_time = None
    late.expected_start_time = NOW + timedelta(seconds=30)
    assert isinstance(claim(FakeClient(late)), Left)


def test_a_refused_proposal_answered_with_our_own_pending_is_ours_a_lost_reply():
    client = FakeClient(run(Scheduled(scheduled_time=NOW)), status=SetStateStatus.REJECT, standing="ours")
    assert isinstance(claim(client), Claimed)


@pytest.mark.parametrize("status", [SetStateStatus.ABORT, SetStateStatus.REJECT])
def test_a_refused_proposal_answered_with_another_proposers_pending_is_left(status):
    client = FakeClient(run(Scheduled(scheduled_time=NOW)), status=status, standing="theirs")
    assert claim(client) == Left("another process claimed it first")


RESUME, EXPIRY = uuid.uuid4(), uuid.uuid4()


def due_at(deployment: uuid.UUID, minutes_ago: int) -> FlowRun:
    found = run(Scheduled(scheduled_time=NOW - timedelta(minutes=minutes_ago)), deployment)
    found.expected_start_time = NOW - timedelta(minutes=minutes_ago)
    return found


class Deleting:
    """Deletes as the server does; `refuse` holds the ids another process deleted first."""

    def __init__(self, refuse: set[uuid.UUID] = frozenset()) -> None:  # type: ignore[assignment]
        self.refuse, self.deleted = refuse, []

    def delete_flow_run(self, run_id: uuid.UUID) -> None:
        if run_id in self.refuse:
            raise RuntimeError("404: flow run not found")
        self.deleted.append(run_id)


def test_after_downtime_only_the_newest_due_run_of_a_repeated_deployment_runs_and_the_rest_are_deleted():
    """The scheduler went on creating resume and expiry runs while nobody took them: each does the
    whole job, so the older ones would only crowd new alerts out of the dispatcher's bounds."""
    resumes = [due_at(RESUME, minutes) for minutes in (3, 1, 2)]
    expiry = due_at(EXPIRY, 5)
    alerts = [due_at(ALERTS, 4), due_at(ALERTS, 0)]  # alert runs are never passed over
    due = [resumes[0], alerts[0], resumes[1], expiry, resumes[2], alerts[1]]
    client = Deleting()

    kept = without_superseded(client, due, {RESUME, EXPIRY})  # type: ignore[arg-type]

    assert kept == [alerts[0], resumes[1], expiry, alerts[1]]
    assert client.deleted == [resumes[0].id, resumes[2].id]
    assert without_superseded(client, alerts + [expiry], {RESUME, EXPIRY}) == alerts + [expiry]  # type: ignore[arg-type]


def test_a_superseded_run_another_process_deleted_first_is_passed_over_quietly():
    older, newer = due_at(RESUME, 2), due_at(RESUME, 1)
    client = Deleting(refuse={older.id})
    assert without_superseded(client, [older, newer], {RESUME}) == [newer]  # type: ignore[arg-type]
    assert client.deleted == []
