"""Claiming a flow run: the Pending proposal the server accepts decides the one process that runs it.

A reply can be lost after the server committed the proposal (a reset connection, a 502 from a
proxy in front of the API). The Prefect client then sends the same request again, and the server,
seeing the same `transition_id` twice (its `PreventDuplicateTransitions` rule), rejects the repeat
and answers with the run's current state: our own Pending. Taking only ACCEPT as a claim left such
a run Pending with nobody to run it. So a claim is ours when the server accepted it, or when the
state it answers is Pending with our transition id.

Prefect's worker (`BaseWorker._propose_pending_state`) takes any Pending answer as its own. That
is looser than needed: a Pending another process set carries its transition id, not ours, and is
left alone (the server answers that proposal ABORT, but the rule here does not rest on that).
`SyncPrefectClient.set_flow_run_state` draws a fresh transition id inside and does not return it,
so the proposal is posted here, with an id of our own. The warm dispatcher claims runs with it
(`ClaimRules`), and so does resume-dispatch before it takes over a run nobody started.

`ClaimRules` is the warm dispatcher's whole decision (deployments/dispatcher.py says why each rule
holds): a run is claimed only if it belongs to one of its deployments and, read just before the
claim, is Scheduled and due. A run due within `soon` is offered again when due; one due later
announces itself again then. It needs only two client calls, `read_flow_run` and `request`, so a
fake client can stand in for Prefect when the rules alone are tested.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas import OrchestrationResult
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.logging import get_logger
from prefect.states import Pending, to_state_create

logger = get_logger("broadcasts.dispatcher")


def propose_pending(client: SyncPrefectClient, run_id: uuid.UUID, transition_id: uuid.UUID | None = None,
                    message: str | None = None) -> State | None:
    """The run's Pending state if this proposal made it (accepted, or answered as a repeat of this
    same transition); None if another proposer's state stands. `transition_id` is fresh unless
    given (a caller repeating its own proposal passes the same one)."""
    transition_id = transition_id or uuid.uuid4()
    proposal = to_state_create(Pending(message=message))
    proposal.state_details.flow_run_id = run_id
    proposal.state_details.transition_id = transition_id
    response = client.request(
        "POST", "/flow_runs/{id}/set_state", path_params={"id": run_id},
        json={"state": proposal.model_dump(mode="json", serialize_as_any=True), "force": False},
    )
    result: OrchestrationResult[object] = OrchestrationResult.model_validate(response.json())
    state = result.state
    if state is None or state.type != StateType.PENDING:
        return None
    if result.status == SetStateStatus.ACCEPT or state.state_details.transition_id == transition_id:
        return state
    return None


@dataclass(frozen=True)
class Claimed:
    run: FlowRun  # its state is our Pending


@dataclass(frozen=True)
class DueSoon:
    seconds: float  # offer it again then


@dataclass(frozen=True)
class Left:
    why: str


class ClaimRules:
    """Whether a run offered to this process is claimed, and the claim itself."""

    def __init__(self, deployments: Collection[uuid.UUID], soon: timedelta,
                 now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> None:
        self.deployments, self.soon, self.now = deployments, soon, now

    def claim(self, client: SyncPrefectClient, run_id: uuid.UUID) -> Claimed | DueSoon | Left:
        run = client.read_flow_run(run_id)
        if run.deployment_id not in self.deployments:
            return Left("not a run of a deployment this dispatcher runs")
        if run.state is None or run.state.type != StateType.SCHEDULED:
            return Left(f"{run.state.name if run.state else 'no state'}: already taken or ended")
        due = run.state.state_details.scheduled_time or run.expected_start_time
        wait = (due - self.now()).total_seconds() if due else 0
        if wait > 0:  # a server's clock slightly ahead of ours, or a retry planned for later
            return DueSoon(wait) if wait <= self.soon.total_seconds() else Left(f"due in {wait:.1f} s")
        claimed = propose_pending(client, run_id)
        if claimed is None:
            return Left("another process claimed it first")
        run.state = claimed
        return Claimed(run)


def without_superseded(client: SyncPrefectClient, due: list[FlowRun], repeated: Collection[uuid.UUID]
                       ) -> list[FlowRun]:
    """`due` without the runs `superseded` finds, which are deleted (as Prefect's Runner deletes a
    paused schedule's runs); one another process took or deleted first is left to it."""
    stale = superseded(due, repeated)
    for run in stale:
        try:
            client.delete_flow_run(run.id)
        except Exception as error:  # the next poll finds it again if it is still there
            logger.info("flow run %s: deleting it, superseded by a later run, failed: %s", run.id, error)
    return [run for run in due if run not in stale]


def superseded(due: list[FlowRun], repeated: Collection[uuid.UUID]) -> list[FlowRun]:
    """The due runs of a repeated deployment (`repeated`: resume-dispatch, expire-broadcasts, whose
    every run does the whole job) that a later due run of the same deployment makes pointless. The
    scheduler goes on creating runs while no process takes them; after that downtime only the
    newest needs to run, and the rest would fill the dispatcher's bounds ahead of new alerts."""
    newest: dict[uuid.UUID, FlowRun] = {}
    for run in due:
        if run.deployment_id in repeated and (run.deployment_id not in newest or run.expected_start_time
                                              > newest[run.deployment_id].expected_start_time):  # type: ignore[operator]
            newest[run.deployment_id] = run
    return [run for run in due if run.deployment_id in newest and run is not newest[run.deployment_id]]
