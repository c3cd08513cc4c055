"""`broadcasts dispatcher`: a warm process that runs each alert run in-process the moment it is
created, instead of after a poll and a fresh Python process (about 1.8 s to the 4th network); and
the scheduled runs of resume-dispatch and expire-broadcasts once due, for the same saving.

Every run stays a normal run of its deployment (`send-broadcast-event`, `send-provider-message`):
the webhook, the trigger, resume-dispatch and the UI create it as before, and this process runs it
with its task runs and logs. Why no run is executed twice, or left behind:

- a run is executed only by the process whose Pending proposal made it Pending; the server aborts
  a Pending proposal for a run already Pending or further, so two dispatchers (or a dispatcher and
  a worker) never both execute one run. A proposal whose reply was lost is resent by the client
  and answered with the run's current state: when that is the Pending carrying our transition id,
  the run is ours (tasks/claim.py);
- a run is claimed only if, read just before the claim, it is Scheduled (AwaitingRetry, what the
  UI's Retry sets, is a Scheduled state) and due: a new events subscriber replays the last minute
  of events, and a run scheduled for later announces itself when it is created;
- the flow's result is persisted, so the server itself refuses to move a Completed run back to
  Pending (it accepts that for runs without a persisted result);
- a run is claimed only when a thread is free to run it now: nothing waits in a queue inside this
  process, so a run left unclaimed stays Scheduled, for another process or the next poll;
- stopping (SIGTERM, Ctrl-C) stops claiming first, leaves runs not yet claimed Scheduled for
  another process, and waits for the runs already claimed (a run retrying a failing network: until
  acknowledged or expired; a second signal ends the process at once): nothing is left Pending;
- events are best effort (dropped under backlog, missed while reconnecting): a poll every second
  of due Scheduled runs catches what they miss.

A SIGKILLed dispatcher leaves its runs Running: they stop sending heartbeats, the zombie-run
automation marks them Crashed and resume-dispatch sends them again with the same identifiers.

How many runs at once. A run retrying a network that is down keeps its thread (asleep, holding no
database connection) until the network answers or the alert expires, and during an outage every
alert live at the time is such a run. With one bound on all runs, those runs filled it and a new
alert waited behind them. So `max_runs` counts only runs that have just started (their first
START_SECONDS here; a healthy run takes about a second): a run still going after that no longer
counts, and all runs together are held to a much larger MAX_HELD, sized from what a waiting run
was measured to cost; past it, new runs stay Scheduled for another process. A reserve of threads
for new runs alone would not hold: a new alert that then waits for the same dead network keeps
its reserved thread, and one outage uses the reserve up.

Cancel in the UI cannot kill a thread, so the provider-send task reads its run's state before each
retry and (in the background) after each failed attempt, and stops when it is Cancelling: the provider message ends
`technical-failure` with the reason (tasks/run_cancel.py), so resume-dispatch leaves it. When the
flow ends this process marks the run Cancelled (the server refuses the flow's own final state
after a cancel, which would leave it Cancelling until Prefect's cleanup 300 s later).
"""

from __future__ import annotations

import asyncio
import contextvars
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from prefect import flow, task
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.objects import FlowRun, StateType
from prefect.context import SyncClientContext
from prefect.events.clients import get_events_subscriber
from prefect.exceptions import ObjectNotFound
from prefect.events.filters import EventFilter, EventNameFilter, EventRelatedFilter
from prefect.flow_engine import run_flow
from prefect.logging import get_logger
from prefect.settings import PREFECT_TASKS_DEFAULT_PERSIST_RESULT, temporary_settings
from prefect.states import Cancelled
from sqlalchemy import text

from broadcasts.cbc_proxy import get_proxy
from broadcasts.db import get_engine, unit_of_work
from broadcasts.settings import get_settings
from deployments.definitions import ALERT_DEPLOYMENTS, WARM_DEPLOYMENTS
from deployments.prefect_api import client_settings, result_storage
from tasks.claim import ClaimRules, DueSoon, Left, without_superseded

POLL_SECONDS = 1.0
# The states the UI and the webhook put a new or retried alert run in (both of type Scheduled).
CLAIM_EVENTS = ["prefect.flow-run.Scheduled", "prefect.flow-run.AwaitingRetry"]
# A run due within this long is started when due rather than left to the next poll.
SOON = timedelta(seconds=POLL_SECONDS)


def _unnamed(warm_flow: Any, alert: bool) -> Any:
    """The flow as this process runs it: an alert flow's result persisted, so the server refuses
    Completed -> Pending (above; not worth a file every interval for resume or expiry); and without
    its run-name template, with which the engine renames every run just before it starts, one more
    API call on the way to the networks. Runs come named from the webhook and resume-dispatch."""
    unnamed = warm_flow.with_options(persist_result=alert)
    unnamed.flow_run_name = None
    return unnamed


WARM_FLOWS = {name: _unnamed(warm_flow, name in ALERT_DEPLOYMENTS) for name, warm_flow in WARM_DEPLOYMENTS.items()}
# Each flow's run-name template, by flow name (the engine's own, which the flows above go without).
RUN_NAMES = {named.name: named.flow_run_name for named in WARM_DEPLOYMENTS.values() if named.flow_run_name}

logger = get_logger("broadcasts.dispatcher")


# Runs just started at once (the CLI's --max-runs): past it, new runs stay Scheduled for another
# process or the next poll, so a burst is shared between dispatchers instead of crowding one.
MAX_RUNS = 64
# How long a run counts as just started: a healthy run has finished long before.
START_SECONDS = 10.0
# Runs held at once in all, starting or asleep between retries (see the module docstring), four
# times the alerts live at once that MAX_RUNS was already far above. A waiting run was measured
# (benchmarks/idle_runs.py, 0 → 100 runs waiting for a dead EE: 147 → 393 MiB) to cost about
# 2.5 MiB of resident memory, 7 threads (its own, the task runner's, the heartbeat) and one
# Prefect API connection, so 256 cost about 650 MiB. Database connections did not grow past 10
# (the pool keeps 10): only one send per network waits on the database for its slot
# (broadcasts/slot_turns.py), and a send takes its per-message lock only once it holds that slot
# (broadcasts/dispatch.py, `_attempt`; the pool is made in broadcasts/db.py).
MAX_HELD = 256


@dataclass
class _Held:
    """A run this process has taken a thread for: since when, and whether it was offered again
    meanwhile (a UI Retry while the engine still finishes the run), an offer kept for afterwards."""

    since: float
    offered_again: bool = False


@task(name="dispatcher-warm-up-check")
def _touch_database_and_proxy_client() -> None:
    settings = get_settings()
    with unit_of_work(get_engine(settings.database_url)) as session:
        session.execute(text("SELECT 1"))
    get_proxy(settings)  # builds the boto3 client (its service model load is slow); calls nothing


_warmed_up = threading.Event()  # once per process: what it warms is shared by the process


@flow(name="dispatcher-warm-up", persist_result=True)  # as the alert flows: warms the result store
def _warm_up() -> None:
    """The first flow run in a process pays 0.5-3 s of one-off setup (the engine, the task
    runner, the log and event workers, the pool's first connection, boto3): pay it here."""
    _touch_database_and_proxy_client.submit().result()


class Dispatcher:
    """Claims and runs the warm deployments' runs; `start()` returns once it listens."""

    def __init__(self, max_runs: int | None = None, poll_seconds: float = POLL_SECONDS,
                 max_held: int = MAX_HELD, start_seconds: float = START_SECONDS) -> None:
        self.max_runs = max_runs or MAX_RUNS
        self.max_held = max(max_held, self.max_runs)
        self.poll_seconds, self.start_seconds = poll_seconds, start_seconds
        self._flows: dict[uuid.UUID, Any] = {}
        self._renamer: ThreadPoolExecutor | None = None
        self._rules = ClaimRules(self._flows, SOON)  # reads the deployments as start() finds them
        self._stopping = threading.Event()
        self._held: dict[uuid.UUID, _Held] = {}  # runs being read, claimed or run here
        self._held_lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._clients: list[SyncPrefectClient] = []
        self._threads: list[threading.Thread] = []
        self._listener: tuple[asyncio.AbstractEventLoop, asyncio.Task[None]] | None = None

    def start(self) -> list[str]:
        """Finds the deployments, warms up, then listens and polls. Returns the deployment names."""
        storage = result_storage()
        with get_client(sync_client=True) as client:
            for name, warm_flow in WARM_FLOWS.items():
                try:
                    deployment_id = client.read_deployment_by_name(name).id
                    self._flows[deployment_id] = warm_flow.with_options(result_storage=storage)
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
            self._pool = ThreadPoolExecutor(self.max_held, thread_name_prefix="run",
                                            initializer=self._prepare_worker, initargs=(contextvars.copy_context(),))
            self._renamer = ThreadPoolExecutor(1, thread_name_prefix="run-names", initializer=self._prepare_worker,
                                               initargs=(contextvars.copy_context(),))
            for target in (self._listen, self._poll):
                thread = threading.Thread(target=contextvars.copy_context().run, args=(target,),
                                          name=f"dispatcher{target.__name__}", daemon=True)
                thread.start()
                self._threads.append(thread)
        return list(WARM_FLOWS)

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
        if self._renamer is not None:
            self._renamer.shutdown(wait=True)
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
        """Gives a run a free thread to be read and, if the rules allow, claimed and run (once at a
        time); with no thread free it is left alone, Scheduled, for another process or the next poll."""
        with self._held_lock:
            if self._pool is None or self._stopping.is_set():
                return
            if run_id in self._held:
                self._held[run_id].offered_again = True
                return
            if not self._room():
                return
            self._held[run_id] = _Held(time.monotonic())
        try:
            self._pool.submit(self._claim_and_run, run_id)
        except RuntimeError:  # the pool shut down between the check and the submit
            with self._held_lock:
                self._held.pop(run_id, None)

    def _room(self) -> bool:
        """Whether a thread is free for one more run now (called holding `_held_lock`)."""
        now = time.monotonic()
        starting = sum(1 for held in self._held.values() if now - held.since < self.start_seconds)
        return starting < self.max_runs and len(self._held) < self.max_held

    def _claim_and_run(self, run_id: uuid.UUID) -> None:
        try:
            run = self._claim(get_client(sync_client=True), run_id)  # this thread's client
            if run is not None:
                self._name(run)
                try:
                    run_flow(self._flows[run.deployment_id], flow_run=_unwatched(run), parameters=run.parameters,
                             return_type="state")
                finally:  # also when a cancel before the start made the engine abort
                    _finish_if_cancelled(get_client(sync_client=True), run)
        except Exception:  # one run's failure must not stop the dispatcher
            logger.exception("flow run %s: claiming or running it failed", run_id)
        finally:
            with self._held_lock:
                held = self._held.pop(run_id, None)
            if held is not None and held.offered_again:
                self.offer(run_id)

    def _name(self, run: FlowRun) -> None:
        """Gives a run the name the engine would have (`send-broadcast-event-<id>`), in the
        background: a run made by the UI or the event trigger comes with a random one."""
        try:
            wanted = RUN_NAMES[self._flows[run.deployment_id].name].format(**run.parameters)
        except (KeyError, IndexError):  # no template, or a parameter it names is missing: left as it is
            return
        if run.name != wanted and self._renamer is not None:
            run.name = wanted
            self._renamer.submit(_rename, run.id, wanted)

    def _claim(self, client: SyncPrefectClient, run_id: uuid.UUID) -> FlowRun | None:
        """The run, now Pending and ours; or None if the rules (tasks/claim.py) say leave it."""
        if self._stopping.is_set():
            return None  # claimed now, it could be left Pending when the pool stops
        decision = self._rules.claim(client, run_id)
        if isinstance(decision, DueSoon):
            timer = threading.Timer(decision.seconds, self.offer, args=(run_id,))
            timer.daemon = True
            timer.start()
            return None
        if isinstance(decision, Left):
            return None
        logger.info("flow run %s (%s) claimed", decision.run.name, run_id)
        return decision.run

    def _poll(self) -> None:
        alert_flows = {alert_flow.name for alert_flow in ALERT_DEPLOYMENTS.values()}
        repeated = {deployment for deployment, found in self._flows.items() if found.name not in alert_flows}
        with get_client(sync_client=True) as client:
            while not self._stopping.wait(self.poll_seconds):
                try:
                    due = client.get_scheduled_flow_runs_for_deployments(
                        list(self._flows), scheduled_before=datetime.now(timezone.utc), limit=100)
                except Exception as error:  # the API may be restarting; the next poll tries again
                    logger.warning("polling for scheduled runs: %s", error)
                    continue
                for run in without_superseded(client, due, repeated):
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
                logger.warning("listening for runs: %s; reconnecting", error)
                await asyncio.sleep(1)


def _unwatched(run: FlowRun) -> FlowRun:
    """The run as handed to the engine: without its deployment, the engine does not watch it for
    an outside suspension before it starts (a thread, an API client and an events socket of its
    own per run, waited for: about 45 ms of every alert's way to the networks, measured). An
    alert run is never suspended; Cancel is how an operator stops one. The engine reads the run
    back, deployment and all, once it is Running, before the flow's first line."""
    return run.model_copy(update={"deployment_id": None})


def _rename(run_id: uuid.UUID, name: str) -> None:
    try:
        get_client(sync_client=True).set_flow_run_name(run_id, name)  # this thread's client
    except Exception as error:  # only the name shown in the UI is left as it was
        logger.warning("flow run %s: renaming it %s failed: %s", run_id, name, error)


def _finish_if_cancelled(client: SyncPrefectClient, run: FlowRun) -> None:
    if client.read_flow_run(run.id).state.type == StateType.CANCELLING:
        event_id = run.parameters.get("broadcast_event_id")
        client.set_flow_run_state(run.id, Cancelled(message="cancelled by an operator" + (
            ": a send not yet acknowledged stops at its next retry and ends technical-failure; see "
            f"`broadcasts status {event_id}` (`broadcasts replay {event_id} PROVIDER` sends one again)"
            if event_id else "")))


@contextmanager
def dispatching(max_runs: int | None = None, **options: Any) -> Iterator[Dispatcher]:
    """A started dispatcher with the production client settings (heartbeats on, for the zombie-run
    automation), stopped and drained at the end. `options`: the Dispatcher's other bounds."""
    with client_settings():
        dispatcher = Dispatcher(max_runs, **options)
        try:
            dispatcher.start()
            yield dispatcher
        finally:
            dispatcher.stop()


def run_until_signalled(max_runs: int | None, echo: Callable[[str], object]) -> None:
    """`broadcasts dispatcher`: dispatches until SIGTERM or SIGINT, then drains. Draining lasts as
    long as a run retrying a failing network, so a second signal ends the process at once."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, on_signal)
    with dispatching(max_runs) as dispatcher:
        echo(f"dispatching: {', '.join(WARM_FLOWS)} (up to {dispatcher.max_runs} runs starting at once, "
             f"{dispatcher.max_held} in all)")
        while not stop.wait(1):
            pass
