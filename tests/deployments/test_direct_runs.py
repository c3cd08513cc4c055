"""Flows this process calls itself (`broadcasts send-event`, `replay`, the benchmarks) share one
Prefect client and ask the server for its default result storage once, not per run
(deployments/prefect_api.direct_runs); the runs are otherwise the same."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.context import SyncClientContext
from prefect.settings import PREFECT_RESULTS_PERSIST_BY_DEFAULT, temporary_settings

from deployments.prefect_api import direct_runs
from flows.send_broadcast_event import run_name, send_broadcast_event
from tests.factories import make_alert
from tests.flows.helpers import statuses


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[tuple[httpx.Client, str, str]]:
    """Every request a synchronous HTTP client sends: (client, method, path), passed through."""
    seen: list[tuple[httpx.Client, str, str]] = []
    send = httpx.Client.send

    def spy(self: httpx.Client, request: httpx.Request, **options: Any) -> httpx.Response:
        seen.append((self, request.method, request.url.path.removeprefix("/api")))
        return send(self, request, **options)

    monkeypatch.setattr(httpx.Client, "send", spy)
    return seen


def test_two_direct_runs_share_one_client_and_ask_for_the_result_storage_once(engine, sim, prefect_server, requests):
    events = [make_alert(engine)[2] for _ in range(2)]
    with direct_runs() as prepared:
        ours = SyncClientContext.get().client._client  # the httpx client under the shared Prefect client
        states = [prepared(send_broadcast_event)(str(event_id), return_state=True) for event_id in events]

    assert [state.is_completed() for state in states] == [True, True], states
    for event_id in events:
        assert {s.status for s in statuses(engine, event_id).values()} == {"returned-ack"}
    asked = Counter(path for _, _, path in requests)
    assert asked["/admin/storage"] == 1, asked
    assert asked["/csrf-token"] <= 1, asked
    # Each call creates its run and starts it as before, on the one client.
    runs = [(client, path) for client, method, path in requests
            if method == "POST" and (path == "/flow_runs/" or path.endswith("/set_state"))]
    assert {client for client, _ in runs} == {ours}, runs
    assert len({path for _, path in runs if path.endswith("/set_state")}) == 2, runs
    with get_client(sync_client=True) as client:  # named by the flow's template, as before
        names = [client.read_flow_run(state.state_details.flow_run_id).name for state in states]
    assert names == [run_name(event_id) for event_id in events]


@flow(name="direct-runs-probe")
def probe() -> str:
    return "done"


@flow(name="direct-runs-probe-not-persisted", persist_result=False)
def not_persisted() -> str:
    return "done"


def test_results_are_persisted_by_prefect_s_own_rule(prefect_server, tmp_path):
    """What Prefect decides for a run left to it (`_get_default_persist_result`), taken once."""
    from prefect.filesystems import LocalFileSystem
    from prefect.results import _get_default_persist_result
    from prefect.settings import PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK

    with direct_runs() as prepared:
        default = prepared(probe)
    assert isinstance(default.result_storage, Path)  # the server has no default storage block
    assert default.persist_result is _get_default_persist_result() is False
    with temporary_settings(updates={PREFECT_RESULTS_PERSIST_BY_DEFAULT: True}), direct_runs() as prepared:
        assert prepared(probe).persist_result is _get_default_persist_result() is True
        assert prepared(not_persisted).persist_result is False  # a flow's own choice stands
        assert prepared(probe)() == "done"
    LocalFileSystem(basepath=str(tmp_path)).save("direct-runs-results", overwrite=True)
    block = "local-file-system/direct-runs-results"
    with temporary_settings(updates={PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: block}), direct_runs() as prepared:
        stored = prepared(probe)
        assert stored.persist_result is _get_default_persist_result() is True
        assert stored.result_storage.basepath == str(tmp_path)
        assert stored() == "done"
