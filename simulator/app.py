"""The simulator's HTTP surface: the Lambda Invoke route plus `/_simulator/*` controls.

- `POST /2015-03-31/functions/{name}/invocations`: Lambda `Invoke` (see `invoke.py`);
- `GET /_simulator/health`: `{"ok": true}`;
- `GET /_simulator/invocations[?function=ee-1-proxy]`: the records, in arrival order;
- `POST /_simulator/faults`: queue a fault (see `faults.py`); 422 with reasons if invalid;
- `GET /_simulator/faults`: the faults still queued;
- `POST /_simulator/reset`: forget records and faults, release hanging calls.

`run` serves it with uvicorn and prints one "listening" line once the socket accepts
connections, so a parent process can wait for that line instead of polling.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import Any

from fastapi import FastAPI, Request
from starlette.responses import JSONResponse, Response

from simulator.faults import FaultRequestError, parse_fault
from simulator.functions import FUNCTIONS
from simulator.invocations import utc_now
from simulator.invoke import SimulatorState, handle_invocation

LISTENING_MESSAGE = "CBC proxy simulator listening on"


def create_app(prefix: str = "") -> FastAPI:
    """A fresh simulator whose functions are called `prefix` + name (e.g. `prod-ee-1-proxy`)."""
    app = FastAPI(title="CBC proxy simulator", docs_url=None, redoc_url=None, openapi_url=None)
    state = SimulatorState(prefix=prefix)
    app.state.simulator = state

    @app.post("/2015-03-31/functions/{function_name}/invocations")
    async def invoke(function_name: str, request: Request) -> Response:
        received_at = utc_now()
        body = await request.body()
        invocation_type = request.headers.get("x-amz-invocation-type")
        return await handle_invocation(state, function_name, invocation_type, body, received_at)

    @app.get("/_simulator/health")
    async def health() -> Response:
        return JSONResponse({"ok": True})

    @app.get("/_simulator/invocations")
    async def invocations(function: str | None = None) -> Response:
        # A plain JSONResponse: FastAPI's response-model encoding is slow on long histories.
        return JSONResponse(state.invocations.as_dicts(function))

    @app.post("/_simulator/faults")
    async def add_fault(request: Request) -> Response:
        try:
            function, fault = parse_fault(json.loads(await request.body()), FUNCTIONS)
        except FaultRequestError as refused:
            return JSONResponse({"detail": refused.reasons}, status_code=422)
        except ValueError as error:
            return JSONResponse({"detail": [f"body: not valid JSON ({error})"]}, status_code=422)
        queued = state.faults.add(function, fault)
        return JSONResponse({"function": function, "fault": fault.describe(), "queued": queued})

    @app.get("/_simulator/faults")
    async def pending_faults() -> Response:
        return JSONResponse(state.faults.pending())

    @app.post("/_simulator/reset")
    async def reset() -> Response:
        state.reset()
        return JSONResponse({"ok": True})

    return app


class CannotListen(Exception):
    """The simulator cannot take its port; the message is one line for the operator."""


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, taken before uvicorn starts so a bad or busy port is one clear
    CannotListen instead of uvicorn's log line, exit 3 and a traceback."""
    if not 0 <= port <= 65535:
        raise CannotListen(f"port {port} is out of range: give 1-65535, or 0 to pick a free port")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
    except OSError as error:
        reason = os.strerror(error.errno) if error.errno else str(error)  # without the address again
        raise CannotListen(f"cannot listen on {host}:{port}: {reason.lower()}") from None
    # asyncio turns Nagle off only on sockets made with proto IPPROTO_TCP, which create_server's
    # are not; accepted connections inherit this instead. Without it a response's body, written
    # after its headers, waited about 40 ms for the client's delayed ACK: every proxy call did.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return listener


def run(host: str = "127.0.0.1", port: int = 9001, prefix: str = "") -> None:
    """Serve the simulator until interrupted. Port 0 picks a free port (printed when ready).
    Raises CannotListen when the port is out of range or taken."""
    import uvicorn  # deferred: only the server process needs it

    sock = listen(host, port)
    config = uvicorn.Config(
        create_app(prefix),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        # A hanging call would otherwise hold shutdown until a reset that never comes.
        timeout_graceful_shutdown=1,
    )
    asyncio.run(_serve(uvicorn.Server(config), host, sock))


async def _serve(server: Any, host: str, sock: socket.socket) -> None:
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not serving.done():
        await asyncio.sleep(0.01)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        print(f"{LISTENING_MESSAGE} http://{host}:{port}", flush=True)
    await serving
