"""A door in front of the test Prefect server, for the provider slot's outage tests. It forwards
to the server, refuses connections, accepts them and never answers, or answers every request
with an HTML page (a proxy's error page); changing the mode cuts every open connection."""

from __future__ import annotations

import socket
import threading
import urllib.parse

MODES = ("forward", "refuse", "hang", "html")
HTML = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"


class PrefectDoor:
    def __init__(self, upstream_api: str) -> None:
        upstream = urllib.parse.urlsplit(upstream_api)
        self._upstream = (upstream.hostname or "127.0.0.1", upstream.port or 80)
        self._path = upstream.path
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.mode = "refuse"
        self.set("forward")

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._path}"

    def set(self, mode: str) -> None:
        assert mode in MODES, mode
        with self._lock:
            self.mode = mode
            for sock in self._sockets:
                _close(sock)
            self._sockets.clear()
            if mode == "refuse" and self._listener is not None:
                _close(self._listener)
                self._listener = None
            elif mode != "refuse" and self._listener is None:
                listener = socket.socket()
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                listener.bind(("127.0.0.1", self.port))
                listener.listen(64)
                listener.settimeout(0.1)
                self._listener = listener
                threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def close(self) -> None:
        self.set("refuse")

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            client.settimeout(None)
            with self._lock:
                mode = self.mode
                self._sockets.add(client)
            if mode == "forward":
                try:
                    upstream = socket.create_connection(self._upstream, timeout=5)
                except OSError:
                    _close(client)
                    continue
                upstream.settimeout(None)
                with self._lock:
                    self._sockets.add(upstream)
                threading.Thread(target=_pump, args=(client, upstream), daemon=True).start()
                threading.Thread(target=_pump, args=(upstream, client), daemon=True).start()
            elif mode == "hang":
                threading.Thread(target=_swallow, args=(client,), daemon=True).start()
            else:
                threading.Thread(target=_answer_html, args=(client,), daemon=True).start()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    _close(sink)
    _close(source)


def _swallow(client: socket.socket) -> None:
    try:
        while client.recv(65536):
            pass
    except OSError:
        pass


def _answer_html(client: socket.socket) -> None:
    """Reads each request (headers and body) and answers 200 with an HTML page."""
    buffer = b""
    try:
        while True:
            while b"\r\n\r\n" not in buffer:
                data = client.recv(65536)
                if not data:
                    return
                buffer += data
            head, buffer = buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                key, _, value = line.partition(b":")
                if key.strip().lower() == b"content-length":
                    length = int(value.strip())
            while len(buffer) < length:
                data = client.recv(65536)
                if not data:
                    return
                buffer += data
            buffer = buffer[length:]
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n"
                           b"Content-Length: %d\r\n\r\n%s" % (len(HTML), HTML))
    except OSError:
        pass


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
