"""Several Prefect API replicas (`PREFECT_API_URLS`) behind one local address.

Prefect's client knows one `PREFECT_API_URL`, and many parts of a process read it: the flow
engine, task runs, heartbeats, the events websocket subscriber (deployments/dispatcher.py),
tasks/run_state.py's own client, and Runner subprocesses, which inherit the environment. Rather
than teach each of them a list, the process listens on 127.0.0.1:<free port>, points
`PREFECT_API_URL` there, and forwards every TCP connection to one replica:

- A new connection goes to the first replica, in list order, not marked down. A connect that
  fails (or takes over 1 s) marks that replica down, and the next one is tried.
- Both hops send at once (TCP_NODELAY): with Nagle on, each API call waited for a delayed ACK
  before the second half of its answer, 0.2 s of the HA stack's 0.56 s to the 4th network.
- A connection whose replica dies is dropped, not moved: nothing is replayed here. Prefect's
  client retries the request on a new connection and the subscriber reconnects, and both then
  reach a live replica.
- Every few seconds each replica's `<path>/health` is asked: one that answers again (the first,
  above all, so processes spread over the replicas as configured) gets new connections again;
  one that accepts connections but no longer answers stops getting them.

Limits: `http://` replicas only, all with the same path; TLS is not terminated here (for TLS, or
replicas reached over an untrusted network, put a load balancer in front and set
`PREFECT_API_URL` to it). A connection already open stays on its replica until that drops it.
Stdlib only, so every command can use it without importing Prefect.
"""

from __future__ import annotations

import http.client
import logging
import os
import selectors
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

CONNECT_TIMEOUT = 1.0
PROBE_INTERVAL = 3.0
PROBE_TIMEOUT = 2.0

logger = logging.getLogger(__name__)


class BadReplicaList(ValueError):
    """`PREFECT_API_URLS` cannot be used as given; the message says why."""


@dataclass(frozen=True)
class Replica:
    url: str
    host: str
    port: int


def parse_replicas(value: str) -> tuple[list[Replica], str]:
    """The replicas in `value` (comma-separated `http://` URLs, in order of preference) and the
    path they share, without a trailing slash."""
    urls = [url.strip() for url in value.split(",") if url.strip()]
    if not urls:
        raise BadReplicaList("no URL given; list the Prefect API replicas in order of preference, "
                             "e.g. http://10.0.0.1:4200/api,http://10.0.0.2:4200/api")
    replicas, paths = [], set()
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "http":
            raise BadReplicaList(f"{url!r} is not an http:// URL; for TLS, put a load balancer in front of "
                                 "the replicas and set PREFECT_API_URL to it instead")
        try:
            port = parts.port or 80
        except ValueError:
            raise BadReplicaList(f"{url!r} has an invalid port") from None
        if not parts.hostname:
            raise BadReplicaList(f"{url!r} names no host")
        replicas.append(Replica(url, parts.hostname, port))
        paths.add(parts.path.rstrip("/"))
    if len(paths) > 1:
        raise BadReplicaList(f"the URLs have different paths ({', '.join(sorted(map(repr, paths)))}); "
                             "every replica must serve the API at the same path")
    return replicas, paths.pop()


class Forwarder:
    """Listens on 127.0.0.1 (`port` once started) and forwards each connection to a replica, as
    the module docstring says."""

    def __init__(self, replicas: list[Replica], health_path: str, connect_timeout: float = CONNECT_TIMEOUT,
                 probe_interval: float = PROBE_INTERVAL, probe_timeout: float = PROBE_TIMEOUT) -> None:
        self.replicas = replicas
        self.health_path = health_path
        self.connect_timeout = connect_timeout
        self.probe_interval = probe_interval
        self.probe_timeout = probe_timeout
        self._down: set[Replica] = set()
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.5)  # accept() wakes up to see stop(): closing alone would not wake it
        self.port: int = self._listener.getsockname()[1]

    def start(self) -> None:
        for loop in (self._accept_loop, self._probe_loop):
            threading.Thread(target=loop, name=f"prefect-failover-{loop.__name__}", daemon=True).start()

    def stop(self) -> None:
        """Stops listening and drops every open connection."""
        self._stopped.set()
        self._listener.close()
        with self._lock:
            for sock in self._open:
                try:
                    sock.shutdown(socket.SHUT_RDWR)  # wakes the connection's thread, which closes it
                except OSError:
                    pass

    def _accept_loop(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed by stop()
            client.settimeout(None)
            _no_delay(client)
            threading.Thread(target=self._serve, args=(client,), name="prefect-failover-connection",
                             daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = self._connect()
        if upstream is None:
            client.close()  # no replica answers: the client sees the connection end and retries
            return
        with self._lock:
            self._open |= {client, upstream}
        try:
            self._pump(client, upstream)
        finally:
            with self._lock:
                self._open -= {client, upstream}
            client.close()
            upstream.close()

    def _connect(self) -> socket.socket | None:
        with self._lock:
            down = set(self._down)
        # Replicas marked down are tried too, last and in list order: they may be back before the
        # next probe sees it, and trying is better than refusing the connection.
        for replica in sorted(self.replicas, key=lambda r: r in down):
            try:
                upstream = socket.create_connection((replica.host, replica.port), timeout=self.connect_timeout)
            except OSError as error:
                self._mark(replica, answering=False, why=str(error) or type(error).__name__)
                continue
            upstream.settimeout(None)
            _no_delay(upstream)
            return upstream
        return None

    @staticmethod
    def _pump(client: socket.socket, upstream: socket.socket) -> None:
        """Copies bytes both ways until both sides have finished sending, or either fails."""
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            try:
                while selector.get_map():
                    for key, _ in selector.select():
                        sock = key.fileobj
                        data = sock.recv(65536)  # type: ignore[union-attr]
                        if data:
                            peer[sock].sendall(data)  # type: ignore[index]
                        else:
                            # One side finished sending: pass that on, keep the other direction open.
                            selector.unregister(sock)
                            peer[sock].shutdown(socket.SHUT_WR)  # type: ignore[index]
            except OSError:
                pass  # a reset on either side: the caller closes both, so the client reconnects

    def _probe_loop(self) -> None:
        while not self._stopped.wait(self.probe_interval):
            for replica in self.replicas:
                self._mark(replica, answering=self._answers(replica), why="no answer to its health check")

    def _answers(self, replica: Replica) -> bool:
        connection = http.client.HTTPConnection(replica.host, replica.port, timeout=self.probe_timeout)
        try:
            connection.request("GET", self.health_path)
            return connection.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            connection.close()

    def first_answering(self) -> Replica:
        """The replica new connections go to now: the first not marked down (else the first)."""
        with self._lock:
            return next((r for r in self.replicas if r not in self._down), self.replicas[0])

    def _mark(self, replica: Replica, answering: bool, why: str) -> None:
        with self._lock:
            changed = (replica in self._down) == answering
            (self._down.discard if answering else self._down.add)(replica)
        if changed and answering:
            logger.warning("the Prefect API replica %s answers again: new connections may go to it", replica.url)
        elif changed:
            logger.warning("the Prefect API replica %s is not answering (%s): new connections go to the next one",
                           replica.url, why)


def _no_delay(sock: socket.socket) -> None:
    """Bytes go on as they come. With Nagle's algorithm on, the second of two small writes (an
    answer's body after its headers) waits for the first one's ACK, which the far side delays by
    up to 40 ms: once per hop, on every API call."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_active: tuple[Forwarder, str | None] | None = None  # this process's forwarder, the operator's PREFECT_UI_URL


def ui_url() -> str | None:
    """Where a link to a run should point while replicas are forwarded: the operator's
    PREFECT_UI_URL, else the UI of the first replica answering now (a replica that died since
    the process started would show a dead page). None without a forwarder."""
    if _active is None:
        return None
    forwarder, operators = _active
    return operators or _ui_of(forwarder.first_answering())


def _ui_of(replica: Replica) -> str:
    return replica.url.rstrip("/").removesuffix("/api")


@contextmanager
def forwarding_prefect_api() -> Iterator[str | None]:
    """With `PREFECT_API_URLS` set: a forwarder to those replicas for the block, and
    `PREFECT_API_URL` pointing at it, whatever it was; yields that URL. Without: yields None and
    changes nothing. Raises BadReplicaList, before starting anything, on a list it cannot use.

    Links to runs name a replica's UI (unless `PREFECT_UI_URL` is set), not the local address,
    which is gone when the process ends while a printed link outlives it. Prefect's own links
    name the first replica's UI; this service's (`ui_url`) the first replica answering when the
    link is printed."""
    global _active
    value = os.environ.get("PREFECT_API_URLS")
    if value is None:
        yield None
        return
    replicas, path = parse_replicas(value)
    forwarder = Forwarder(replicas, health_path=f"{path}/health")
    forwarder.start()
    url = f"http://127.0.0.1:{forwarder.port}{path}"
    operators_ui = os.environ.get("PREFECT_UI_URL")
    first_ui = operators_ui or _ui_of(replicas[0])
    previous = {name: os.environ.get(name) for name in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    # For subprocesses, and for Prefect if it is imported later.
    os.environ.update({"PREFECT_API_URL": url, "PREFECT_UI_URL": first_ui})
    _active = (forwarder, operators_ui)
    try:
        with _prefect_settings(url, first_ui):
            yield url
    finally:
        _active = None
        send_pending_logs_and_events()
        for name, before in previous.items():
            if before is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = before
        _refresh_prefect_settings()
        forwarder.stop()


@contextmanager
def _prefect_settings(url: str, ui_url: str) -> Iterator[None]:
    """Prefect reads PREFECT_API_URL from the environment when first imported. If it already is,
    its process-wide settings (seen by threads started without a context) are read again, and
    this thread's context (which may hold a temporary PREFECT_API_URL) is overridden."""
    if "prefect.context" not in sys.modules:
        yield
        return
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    _refresh_prefect_settings()
    with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ui_url}):
        yield


def _refresh_prefect_settings() -> None:
    if "prefect.context" in sys.modules:
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()


def send_pending_logs_and_events() -> None:
    """Prefect's log and event workers send what they hold while the forwarder (or a temporary
    server) still listens: at exit they would retry against its closed port for over a minute."""
    if "prefect.logging.handlers" in sys.modules:
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)
    if "prefect.events.worker" in sys.modules:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)
