"""The failover forwarder (deployments/prefect_failover.py) over real sockets: real Prefect servers
for the client, the events websocket and the CLI; small stdlib HTTP servers where a test needs a
replica that comes back or hangs."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from deployments.prefect_failover import Forwarder, parse_replicas
from tests.conftest import PROJECT_ROOT
from tests.support.polling import eventually
from tests.support.prefect_server import PrefectServer, running
from tests.support.processes import free_port

# Nothing here reads or writes the app database: the SQLite pass leaves it to the PostgreSQL pass.
pytestmark = [pytest.mark.prefect, pytest.mark.long(30)]

BROADCASTS = str(Path(sys.executable).with_name("broadcasts"))


@contextmanager
def forwarder_to(*urls: str, **options: float) -> Iterator[str]:
    """A started forwarder to `urls`; yields its API URL."""
    replicas, path = parse_replicas(",".join(urls))
    forwarder = Forwarder(replicas, health_path=f"{path}/health", **options)
    forwarder.start()
    try:
        yield f"http://127.0.0.1:{forwarder.port}{path}"
    finally:
        forwarder.stop()


def dead_url() -> str:
    return f"http://127.0.0.1:{free_port()}/api"  # nothing listens there


def get(url: str, timeout: float = 5) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read().decode()


@contextmanager
def prefect_client(api: str) -> Iterator:  # type: ignore[type-arg]
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api}), get_client(sync_client=True) as client:
        yield client


def sqlite_prefect_server(home: Path) -> PrefectServer:
    """A Prefect API (no services) on its own SQLite database."""
    return PrefectServer(home, {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")},
                         ["--no-services", "--no-ui"])


def test_a_forwarder_in_front_of_a_dead_port_and_a_live_server_answers_health(prefect_server):
    with forwarder_to(dead_url(), prefect_server) as api:
        assert get(f"{api}/health") == "true"


def test_a_prefect_client_goes_on_through_the_second_server_when_the_first_is_killed(tmp_path):
    with (running(sqlite_prefect_server(tmp_path / "a")) as server_a,
          running(sqlite_prefect_server(tmp_path / "b")) as server_b):
        a, b = server_a.api, server_b.api
        before, after = f"before-{uuid.uuid4().hex}", f"after-{uuid.uuid4().hex}"
        with forwarder_to(a, b) as api, prefect_client(api) as client:
            client.create_flow_from_name(before)
            with prefect_client(a) as on_a:
                assert on_a.read_flow_by_name(before).name == before
            server_a.kill()
            # The same client, whose kept-alive connection went to A.
            client.create_flow_from_name(after)
        with prefect_client(b) as on_b:
            assert on_b.read_flow_by_name(after).name == after


def test_the_events_subscriber_receives_an_event_through_the_forwarder(prefect_server):
    from prefect.events import Event
    from prefect.events.clients import get_events_client, get_events_subscriber
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.settings import PREFECT_API_URL, temporary_settings

    name = f"test.failover.{uuid.uuid4().hex}"

    async def emit_and_receive() -> Event:
        async with get_events_subscriber(filter=EventFilter(event=EventNameFilter(name=[name]))) as events:
            async with get_events_client() as client:
                await client.emit(Event(event=name, resource={"prefect.resource.id": f"test.{name}"}))
            return await asyncio.wait_for(events.__anext__(), 60)

    with forwarder_to(dead_url(), prefect_server) as api, temporary_settings(updates={PREFECT_API_URL: api}):
        assert asyncio.run(emit_and_receive()).event == name


class Named(BaseHTTPRequestHandler):
    """Answers every GET with the server's name."""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        body = self.server.name.encode()  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def named_server(name: str, port: int = 0) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", port), Named)
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def answers_within(url: str, expected: str, seconds: float) -> bool:
    """Whether a new connection to `url` answers `expected` before `seconds` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if get(url, timeout=1) == expected:
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def test_new_connections_go_back_to_the_first_replica_once_it_answers_again():
    first_port = free_port()
    with named_server("second") as second, forwarder_to(f"http://127.0.0.1:{first_port}/api", second,
                                                       probe_interval=0.1) as api:
        assert get(f"{api}/health") == "second"
        with named_server("first", first_port):
            assert answers_within(f"{api}/health", "first", seconds=10)


def test_a_replica_that_accepts_connections_but_never_answers_stops_getting_them():
    with socket.create_server(("127.0.0.1", 0)) as hung:  # the kernel completes connects; no one reads
        hung_url = f"http://127.0.0.1:{hung.getsockname()[1]}/api"
        with named_server("second") as second, forwarder_to(hung_url, second, probe_interval=0.1,
                                                           probe_timeout=0.2) as api:
            assert answers_within(f"{api}/health", "second", seconds=10)


def test_a_connection_whose_replica_goes_away_is_dropped():
    with socket.create_server(("127.0.0.1", 0)) as replica:
        with forwarder_to(f"http://127.0.0.1:{replica.getsockname()[1]}/api") as api:
            port = int(api.rsplit(":", 1)[1].split("/")[0])
            with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
                accepted, _ = replica.accept()
                accepted.close()
                assert client.recv(1) == b""  # the end, not a connection left hanging


def test_both_sockets_of_a_forwarded_connection_send_at_once():
    """TCP_NODELAY on both hops: with Nagle on, every API call through the forwarder waited for a
    delayed ACK (up to 40 ms) before the second half of its answer."""
    with socket.create_server(("127.0.0.1", 0)) as replica:
        replicas, path = parse_replicas(f"http://127.0.0.1:{replica.getsockname()[1]}/api")
        forwarder = Forwarder(replicas, health_path=f"{path}/health")
        forwarder.start()
        try:
            with socket.create_connection(("127.0.0.1", forwarder.port), timeout=10):
                accepted, _ = replica.accept()
                with accepted:
                    opened = eventually(lambda: list(forwarder._open), 5)
                    assert len(opened) == 2, opened
                    assert all(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) for sock in opened)
        finally:
            forwarder.stop()


@pytest.mark.parametrize(("urls", "says"), [
    ("https://127.0.0.1:4201/api,https://127.0.0.1:4202/api", "is not an http:// URL"),
    ("http://127.0.0.1:4201/api,http://127.0.0.1:4202/prefect/api", "the URLs have different paths"),
    (" , ", "no URL given"),
])
def test_a_replica_list_that_cannot_be_used_is_one_line(cli, configure, urls, says):
    configure(PREFECT_API_URLS=urls)
    result = cli("bootstrap")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: PREFECT_API_URLS: ") and says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_the_command_reaches_prefect_through_the_replica_list_which_wins_over_prefect_api_url(prefect_server):
    dead = dead_url()
    env = {**os.environ, "PREFECT_API_URL": dead, "PREFECT_API_URLS": f"{dead},{prefect_server}"}
    result = subprocess.run([BROADCASTS, "bootstrap"], cwd=PROJECT_ROOT, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "work pool" in result.stdout


def test_the_operator_sees_the_replicas_and_run_links_name_the_first_replicas_ui(configure, monkeypatch):
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    from broadcasts.settings import get_settings
    from deployments.prefect_failover import forwarding_prefect_api
    from deployments.serve import describe

    first, second = dead_url(), dead_url()
    configure(PREFECT_API_URLS=f"{first},{second}")
    monkeypatch.delenv("PREFECT_UI_URL", raising=False)
    with forwarding_prefect_api() as url:
        assert url is not None and url.startswith("http://127.0.0.1:") and PREFECT_API_URL.value() == url
        # The forwarder's address dies with the process; a printed link must not.
        assert PREFECT_UI_URL.value() == os.environ["PREFECT_UI_URL"] == first.removesuffix("/api")
        assert f"Prefect API: replicas {first},{second} (through {url})" in describe(get_settings())
    assert "PREFECT_UI_URL" not in os.environ


def test_run_links_name_the_first_replica_still_answering(configure, monkeypatch):
    """After the first replica dies, a link printed to an operator (`broadcasts trigger --wait`)
    names a replica that answers; an operator's own PREFECT_UI_URL always wins."""
    from deployments import prefect_failover

    with named_server("second") as second:
        configure(PREFECT_API_URLS=f"{dead_url()},{second}")
        monkeypatch.delenv("PREFECT_UI_URL", raising=False)
        with prefect_failover.forwarding_prefect_api() as url:
            assert get(f"{url}/health") == "second"  # the dead first replica is now marked down
            assert prefect_failover.ui_url() == second.removesuffix("/api")
        assert prefect_failover.ui_url() is None

        monkeypatch.setenv("PREFECT_UI_URL", "https://prefect.example/ui")
        with prefect_failover.forwarding_prefect_api():
            assert prefect_failover.ui_url() == "https://prefect.example/ui"
