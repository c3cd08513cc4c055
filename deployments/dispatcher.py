"""`broadcasts dispatcher`: a warm process that runs each alert run in-process the moment it is
created, instead of after a poll and a fresh Python process (about 1.8 s to the 4th network).

Every run stays a normal run of its deployment (`send-broadcast-event`, `send-provider-message`):
the webhook, the trigger, resume-dispatch and the UI create it as before, and this process runs it
with its task runs and logs. Why no run is executed twice, or left behind:

- a run is executed only by the process whose Pending proposal the server accepted; the server
  aborts a Pending proposal for a run already Pending or further, so two dispatchers (or a
  dispatcher and a worker) never both execute one run;
- a run is claimed only if, read just before the claim, it is Scheduled (AwaitingRetry, what the
  UI's Retry sets, is a Scheduled state) and due: a new events subscriber replays the last minute
  of events, and a run scheduled for later announces itself when it is created;
- the flow's result is persisted, so the server itself refuses to move a Completed run back to
  Pending (it accepts that for runs without a persisted result);
- stopping (SIGTERM, Ctrl-C) stops claiming first, leaves runs not yet claimed Scheduled for
  another process, and waits for the runs already claimed: nothing is left Pending;
- events are best effort (dropped under backlog, missed while reconnecting): a poll every second
  of due Scheduled runs catches what they miss.

A SIGKILLed dispatcher leaves its runs Running: they stop sending heartbeats, the zombie-run
automation marks them Crashed and resume-dispatch sends them again with the same identifiers.

Cancel in the UI does not stop a run here: Prefect cancels by killing the run's process, and a
thread cannot be killed. The run shows Cancelling while it goes on exactly as if not cancelled:
task retries are decided in this process, so a failing network is retried on its schedule until
it acknowledges or the event expires. When the flow ends this process marks the run Cancelled
(the server refuses the flow's own final state after a cancel, which would leave it Cancelling).
A send usually takes well under a second, so a cancel mostly arrives after the sends; to stop
retries sooner, the retry decision in tasks/ would have to read the run's state.

Stopping waits for runs under way, which for a run retrying a failing network lasts until it is
acknowledged or the event expires; a second signal ends the process at once (recovered as above).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.client.schemas.responses import SetStateStatus
from prefect.context import SyncClientContext
from prefect.events.clients import get_events_subscriber
from prefect.exceptions import ObjectNotFound
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.flow_engine import run_flow
from prefect.logging import get_logger
from prefect.settings import PREFECT_TASKS_DEFAULT_PERSIST_RESULT, temporary_settings
from prefect.states import Cancelled, Pending
from sqlalchemy import text

from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import get_engine, unit_of_work
from broadcasts.settings import get_settings
from deployments import names
from deployments.serve import client_settings
from flows.send_broadcast_event import send_broadcast_event
from flows.send_provider_message import send_provider_message
from tasks.provider_limits import ensure_limits

POLL_SECONDS = 1.0
# The states the UI and the webhook put a new or retried alert run in (both of type Scheduled).
CLAIM_EVENTS = ["prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry"]
# A run due within this long is started when due rather than left to the next poll.
SOON = timedelta(seconds=POLL_SECONDS)
# Persisting the flow's result is what makes the server refuse Completed -> Pending (see above).
ALERT_FLOWS = {names.SEND_EVENT_DEPLOYMENT: send_broadcast_event.with_options(persist_result=True),
               names.SEND_PROVIDER_DEPLOYMENT: send_provider_message.with_options(persist_result=True)}

logger = get_logger("broadcasts.dispatcher")


# Runs at once. A run retrying a network that is down keeps its thread (asleep, holding no
# database connection) until the network answers or the alert expires, so the bound is far above
# the alerts live at once; past it, new runs stay Scheduled for another process. The database
# pool is not the limit: a send takes its connection (the per-message lock) only once it holds
# its network's slot, so one process holds about two connections per network whatever the number
# of runs (broadcasts/dispatch.py, `_attempt`; the pool is made in broadcasts/db.py).
MAX_RUNS = 64


@task(name="dispatcher-warm-up-check")
def _touch_database_and_proxy_client() -> None:
    settings = get_settings()
    with unit_of_work(get_engine(settings.database_url)) as session:
        session.execute(text("SELECT 1"))
    get_proxy(settings)  # builds the boto3 client (its service model load is slow); calls nothing
    ensure_limits(settings.enabled_cbcs)  # the cbc-<provider> limits, checked once per process


_warmed_up = threading.Event()  # once per process: what it warms is shared by the process


@flow(name="dispatcher-warm-up", persist_result=True)  # as the alert flows: warms the result store
def _warm_up() -> None:
    """The first flow run in a process pays 0.5-3 s of one-off setup (the engine, the task
    runner, the log and event workers, the pool's first connection, boto3): pay it here."""
    _touch_database_and_proxy_client.submit().result()


class Dispatcher:
    """Claims and runs the alert deployments' runs; `start()` returns once it listens."""

    def __init__(self, max_runs: int | None = None, poll_seconds: float = POLL_SECONDS) -> None:
        self.max_runs = max_runs or MAX_RUNS
        self.poll_seconds = poll_seconds
        self._flows: dict[uuid.UUID, Any] = {}
        self._stopping = threading.Event()
        # Runs queued or running here, each with whether it was offered again meanwhile (a UI
        # Retry while the engine still finishes the run): that offer is kept for afterwards.
        self._offered: dict[uuid.UUID, bool] = {}
        self._offered_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._clients: list[SyncPrefectClient] = []
        self._threads: list[threading.Thread] = []
        self._listener: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None

    def start(self) -> list[str]:
        """Finds the deployments, warms up, then listens and polls. Returns the deployment names."""
        with get_client(sync_client=True) as client:
            for name, alert_flow in ALERT_FLOWS.items():
                try:
                    self._flows[client.read_deployment_by_name(name).id] = alert_flow
                except ObjectNotFound:
                    raise ObjectNotFound(http_exc=None, help_message=(
                        f"the deployment {name} is not registered: run `broadcasts serve` once, or "
                        "`prefect deploy --all`")) from None
        # Only the flow's result is persisted, not the tasks': a UI Retry runs every task again,
        # as under `serve`, and the domain makes that safe. Set for this dispatcher's threads only.
        with temporary_settings(updates={PREFECT_TASKS_DEFAULT_PERSIST_RESULT: False}):
            if not _warmed_up.is_set():
                if _warm_up(return_state=True).is_completed():
                    _warmed_up.set()
                else:  # only the first alert is slower
                    logger.warning("the warm-up run failed (see its logs); dispatching without it")
            self._pool = ThreadPoolExecutor(self.max_runs, thread_name_prefix="alert-run",
                                            initializer=self._prepare_worker, initargs=(contextvars.copy_context(),))
            for target in (self._listen, self._poll):
                thread = threading.Thread(target=contextvars.copy_context().run, args=(target,),
                                          name=f"dispatcher{target.__name__}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return list(ALERT_FLOWS)

    def stop(self) -> None:
        """Stops claiming, drops the runs not yet claimed (still Scheduled) and waits for the rest."""
        self._stopping.set()
        if self._listener is not None:
            loop, listening = self._listener
            try:
                loop.call_soon_threadsafe(listening.cancel)
            except RuntimeError:  # the loop has already closed
                pass
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        for thread in self._threads:
            thread.join(10)
        for client in self._clients:
            client.__exit__(None, None, None)

    def _prepare_worker(self, context: contextvars.Context) -> None:
        """A worker thread keeps the dispatcher's settings and one API client for its life, which
        the engine uses too: a new client per run cost about 35 ms before the claim and again
        before the flow started."""
        for variable, value in context.items():
            variable.set(value)
        clients = SyncClientContext().__enter__()  # left only when the thread ends
        self._clients.append(clients.client)

    def offer(self, run_id: uuid.UUID) -> None:
        """Queues a run to be read and, if the rules allow, claimed and run (once at a time)."""
        with self._offered_lock:
            if self._pool is None or self._stopping.is_set():
                return
            if run_id in self._offered:
                self._offered[run_id] = True
                return
            self._offered[run_id] = False
        try:
            self._pool.submit(self._claim_and_run, run_id)
        except RuntimeError:  # the pool shut down between the check and the submit
            with self._offered_lock:
                self._offered.pop(run_id, None)

    def _claim_and_run(self, run_id: uuid.UUID) -> None:
        try:
            run = self._claim(get_client(sync_client=True), run_id)  # this thread's client
            if run is not None:
                try:
                    run_flow(self._flows[run.deployment_id], flow_run=run, parameters=run.parameters,
                             return_type="state")
                finally:  # also when a cancel before the start made the engine abort
                    _finish_if_cancelled(get_client(sync_client=True), run)
        except Exception:  # one run's failure must not stop the dispatcher
            logger.exception("flow run %s: claiming or running it failed", run_id)
        finally:
            with self._offered_lock:
                again = self._offered.pop(run_id, False)
            if again:
                self.offer(run_id)

    def _claim(self, client: SyncPrefectClient, run_id: uuid.UUID) -> FlowRun | None:
        """The run, now Pending and ours; or None if the rules say leave it."""
        if self._stopping.is_set():
            return None  # claimed now, it could be left Pending when the pool stops
        run = client.read_flow_run(run_id)
        if run.deployment_id not in self._flows or run.state is None or run.state.type != StateType.SCHEDULED:
            return None  # a replayed event of a run already taken, or of another deployment
        due = run.state.state_details.scheduled_time or run.expected_start_time
        wait = (due - datetime.now(timezone.utc)).total_seconds() if due else 0
        if wait > 0:
            if wait <= SOON.total_seconds():  # e.g. the server's clock slightly ahead of ours
                timer = threading.Timer(wait, self.offer, args=(run_id,))
                timer.daemon = True
                timer.start()
            return None
        result = client.set_flow_run_state(run_id, Pending())
        if result.status != SetStateStatus.ACCEPT:
            return None  # another process claimed it first
        run.state = result.state
        logger.info("flow run %s (%s) claimed", run.name, run_id)
        return run

    def _poll(self) -> None:
        with get_client(sync_client=True) as client:
            while not self._stopping.wait(self.poll_seconds):
                try:
                    due = client.get_scheduled_flow_runs_for_deployments(
                        list(self._flows), scheduled_before=datetime.now(timezone.utc), limit=100)
                except Exception as error:  # the API may be restarting; the next poll tries again
                    logger.warning("polling for scheduled alert runs: %s", error)
                    continue
                for run in due:
                    self.offer(run.id)

    def _listen(self) -> None:
        loop = asyncio.new_event_loop()
        listening = loop.create_task(self._subscribe())
        self._listener = (loop, listening)
        if self._stopping.is_set():
            listening.cancel()
        try:
            loop.run_until_complete(listening)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    async def _subscribe(self) -> None:
        deployments = [f"prefect.deployment.{deployment_id}" for deployment_id in self._flows]
        wanted = EventFilter(event=EventNameFilter(name=CLAIM_EVENTS), related=EventRelatedFilter(id=deployments))
        while not self._stopping.is_set():
            try:
                async with get_events_subscriber(filter=wanted, reconnect_on_clean_close=True) as events:
                    async for event in events:
                        self.offer(uuid.UUID(event.resource.id.rsplit(".", 1)[-1]))
            except Exception as error:  # the poll covers the gap; the subscriber replays a minute
                logger.warning("listening for alert runs: %s; reconnecting", error)
                await asyncio.sleep(1)


def _finish_if_cancelled(client: SyncPrefectClient, run: FlowRun) -> None:
    if client.read_flow_run(run.id).state.type == StateType.CANCELLING:
        client.set_flow_run_state(run.id, Cancelled(
            message="cancelled while running: it went on until every network acknowledged or the "
            f"event expired; see `broadcasts status {run.parameters.get('broadcast_event_id')}`"))


@contextmanager
def dispatching(max_runs: int | None = None) -> Iterator[Dispatcher]:
    """A started dispatcher with the production client settings (heartbeats on, for the zombie-run
    automation), stopped and drained at the end."""
    with client_settings():
        dispatcher = Dispatcher(max_runs)
        try:
            dispatcher.start()
            yield dispatcher
        finally:
            dispatcher.stop()

