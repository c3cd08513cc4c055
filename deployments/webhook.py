"""The webhook: the service API's signed request to send one broadcast event (docs/behaviour.md §7).

Why it is safe:
- Only a holder of WEBHOOK_SECRET can start a send. Every call carries an HMAC-SHA256 of its
  timestamp and exact body, compared in constant time before the body is even parsed. A timestamp
  more than 300 s from now is refused, so a captured call cannot be replayed later.
- A duplicate never re-sends. The flow run is created with the event's idempotency key, and the
  Prefect server answers the existing run for a key it has seen: for a repeated call, 20 racing
  ones, a retry after a lost answer, or a call after the run has finished. A creation that fails
  (on SQLite, racing writers are answered 503 "database is locked") looks the run up by its key
  before trying again, so a duplicate that lost the race gets the run a racer created.
- Nothing is half-written. The webhook writes nothing to the database; its one effect is creating
  the flow run, a single Prefect API call that either happened (a retry then finds the same run)
  or did not. Every check runs before it, so a rejected call has no effect at all.

Checks, in order: size (413) → signature (401) → JSON (400) → shape (422) → event exists (404) →
create the run (202). Prefect unreachable for over about 2 s, or the flow not deployed: 503 with
Retry-After. How to sign a call, with a curl + openssl example: `deployments/signing.py`.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

import anyio
import httpx
import uvicorn
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from prefect.client.orchestration import PrefectClient, get_client
from prefect.client.schemas.filters import FlowFilter, FlowFilterId, FlowRunFilter, FlowRunFilterIdempotencyKey
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectNotFound
from prefect.context import SettingsContext
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from broadcasts import dao
from broadcasts.db import get_engine
from broadcasts.errors import UnknownEvent
from broadcasts.settings import Settings, get_settings
from flows.send_broadcast_event import DEPLOYMENT_NAME as SEND_EVENT_DEPLOYMENT, idempotency_key, run_name
from deployments.signing import BadSignature, SecretNotSet, check_signature, secret_key
from deployments.trigger import EVENTS_PATH

MAX_BODY_BYTES = 4096
# The waits between attempts, each drawn at random from its range so that callers failing together
# (20 duplicate posts meeting SQLite's write lock) do not try again together: 1.2 to 2 s in all, so
# a Prefect API gone for about a second is absorbed and one that stays down is answered 503 within
# about 2 s.
PREFECT_RETRY_WAITS = ((0.1, 0.2), (0.2, 0.4), (0.35, 0.6), (0.55, 0.8))
PREFECT_ATTEMPTS = len(PREFECT_RETRY_WAITS) + 1
# Each request is given up to 5 s to answer (2 s to connect). A call reads the deployment once,
# then each attempt creates the run and, when that fails, looks it up: eleven requests and up to
# 2 s of waits, about 55 s when every answer comes just inside its timeout (54.7 s measured with
# answers at 4.8 s; 59.6 s for a client's first call, which also asks for a CSRF token). That is
# longer than the trigger client's 30 s, which may give up and call again (the idempotency key
# makes that safe).
PREFECT_TIMEOUT = httpx.Timeout(5.0, connect=2.0)
# Idle connections are dropped before the Prefect server's 5 s keep-alive timeout closes them, so a
# request seldom meets a connection the server has just closed (it would be retried, but later).
PREFECT_LIMITS = httpx.Limits(max_connections=16, max_keepalive_connections=8, keepalive_expiry=2.0)
RETRY_AFTER_SECONDS = 5
DIGITS = re.compile(r"[0-9]+")

logger = logging.getLogger(__name__)


class WebhookNotConfigured(Exception):
    """The webhook cannot start; the message names the variable to set."""


class PrefectUnavailable(Exception):
    """The Prefect API failed every attempt, or refused the request."""


class NotDeployed(Exception):
    """The send-broadcast-event deployment does not exist on the Prefect server."""


class BroadcastEventRequest(BaseModel):
    # Unknown fields are refused: a signed body should say exactly what the caller meant.
    model_config = ConfigDict(extra="forbid")
    broadcast_event_id: uuid.UUID


class RunCreated(BaseModel):
    flow_run_id: uuid.UUID
    deployment: str


def create_app(settings: Settings) -> FastAPI:
    try:
        key = secret_key(settings)
    except SecretNotSet as error:
        raise WebhookNotConfigured(f"{error}: the webhook refuses to start without one") from None
    app = FastAPI(title="broadcasts webhook", description="Starts the sending of one broadcast event.")
    app.middleware("http")(access_log_and_last_resort)

    @app.post(
        EVENTS_PATH, status_code=202, response_model=RunCreated,
        summary="Send one broadcast event (once, however often it is asked)",
        responses={code: {"description": why} for code, why in RESPONSES.items()},
        # The body is read by hand (the signature covers its raw bytes), so describe it here.
        openapi_extra={"requestBody": {"required": True, "content": {
            "application/json": {"schema": BroadcastEventRequest.model_json_schema()}}}},
    )
    async def broadcast_events(
        request: Request,
        x_timestamp: Annotated[str | None, Header(description="unix seconds")] = None,
        x_signature: Annotated[str | None, Header(description="hex HMAC-SHA256 of '<timestamp>.<body>'")] = None,
    ) -> RunCreated:
        body = await read_body(request)
        try:
            check_signature(key, x_timestamp, x_signature, body)
        except BadSignature as error:
            raise reject(401, str(error)) from None
        event_id = parse_request(body).broadcast_event_id
        await check_event_exists(settings, event_id)
        run_id = await create_run(event_id)
        logger.info("event %s: flow run %s", event_id, run_id)
        return RunCreated(flow_run_id=run_id, deployment=SEND_EVENT_DEPLOYMENT)

    @app.get("/healthz", summary="Database, Prefect API and deployment reachable")
    async def healthz() -> JSONResponse:
        parts = {"database": await run_in_threadpool(database_health, settings.database_url)}
        parts["prefect"], parts["deployment"] = await prefect_health()
        return JSONResponse(parts, status_code=200 if set(parts.values()) == {"ok"} else 503)

    return app


RESPONSES = {400: "the body is not JSON", 401: "missing, wrong or stale signature", 404: "unknown event",
             413: f"body over {MAX_BODY_BYTES} bytes", 422: "JSON of the wrong shape",
             503: "Prefect or the database unreachable, or the flow not deployed; see Retry-After"}


def reject(status: int, detail: Any, retry: bool = False) -> HTTPException:
    # A 422's detail names the caller's fields; everything else is our own wording.
    logger.info("rejected with %s: %s", status, detail if isinstance(detail, str) else "JSON of the wrong shape")
    return HTTPException(status, detail, headers={"Retry-After": str(RETRY_AFTER_SECONDS)} if retry else None)


async def read_body(request: Request) -> bytes:
    """At most MAX_BODY_BYTES, counted as they arrive: a missing or lying Content-Length cannot
    make us buffer more."""
    declared = request.headers.get("content-length", "")
    if DIGITS.fullmatch(declared) and int(declared) > MAX_BODY_BYTES:  # (str.isdigit accepts "²")
        raise reject(413, f"the body is over {MAX_BODY_BYTES} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise reject(413, f"the body is over {MAX_BODY_BYTES} bytes")
    return bytes(body)


def parse_request(body: bytes) -> BroadcastEventRequest:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise reject(400, "the body is not valid JSON") from None
    try:
        return BroadcastEventRequest.model_validate(document)
    except ValidationError as error:
        problems = error.errors(include_url=False, include_context=False, include_input=False)
        raise reject(422, [{"loc": p["loc"], "msg": p["msg"], "type": p["type"]} for p in problems]) from None


def _event_exists(database_url: str, event_id: uuid.UUID) -> bool:
    with Session(get_engine(database_url)) as session:  # read only: closing rolls back
        try:
            dao.get_event(session, event_id)
        except UnknownEvent:
            return False
    return True


async def check_event_exists(settings: Settings, event_id: uuid.UUID) -> None:
    try:
        exists = await run_in_threadpool(_event_exists, settings.database_url, event_id)
    except SQLAlchemyError as error:
        logger.warning("the broadcasts database is unreachable (%s)", type(error).__name__)
        raise reject(503, "the broadcasts database is unreachable; try again", retry=True) from None
    if not exists:
        raise reject(404, f"no broadcast event with id {event_id}")


def database_health(database_url: str) -> str:
    try:
        with get_engine(database_url).connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as error:  # a bad URL fails in many ways; each means "not usable"
        logger.warning("health: database unreachable (%s)", type(error).__name__)
        return "unreachable"
    return "ok"


async def create_run(event_id: uuid.UUID) -> uuid.UUID:
    key = idempotency_key(event_id)
    deployment: DeploymentResponse | None = None

    async def create(client: PrefectClient) -> uuid.UUID:
        nonlocal deployment
        if deployment is None:  # read once, however many attempts the creation takes
            deployment = await client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT)
        try:
            run = await client.create_flow_run_from_deployment(
                deployment.id, parameters={"broadcast_event_id": str(event_id)}, idempotency_key=key,
                name=run_name(event_id))
            return run.id
        except (httpx.HTTPStatusError, httpx.TransportError) as error:
            if isinstance(error, httpx.HTTPStatusError) and not transient_status(error.response.status_code):
                raise
            # A racing call may have created the run meanwhile. Even a creation that finds the run
            # is a write, which on SQLite queues for the lock this one just failed to get; the
            # look-up is a read, which does not.
            existing = await run_with_key(client, deployment.flow_id, key)
            if existing is None:
                raise
            return existing

    try:
        return await with_prefect(create)
    except NotDeployed:
        raise reject(503, f"the deployment {SEND_EVENT_DEPLOYMENT} does not exist on the Prefect "
                          "server: the service is not deployed", retry=True) from None
    except PrefectUnavailable as error:
        raise reject(503, f"the Prefect API is unavailable ({error}); try again", retry=True) from None


async def run_with_key(client: PrefectClient, flow_id: uuid.UUID, key: str) -> uuid.UUID | None:
    """The run of the flow with this idempotency key: the one a creation with the key would answer."""
    runs = await client.read_flow_runs(
        flow_filter=FlowFilter(id=FlowFilterId(any_=[flow_id])),
        flow_run_filter=FlowRunFilter(idempotency_key=FlowRunFilterIdempotencyKey(any_=[key])), limit=1)
    return runs[0].id if runs else None


async def prefect_health() -> tuple[str, str]:
    try:
        await with_prefect(lambda client: client.read_deployment_by_name(SEND_EVENT_DEPLOYMENT), attempts=1)
    except NotDeployed:
        return "ok", "not found"
    except Exception as error:  # the health answer names the failure instead of failing itself
        return f"unavailable ({error if isinstance(error, PrefectUnavailable) else type(error).__name__})", "unknown"
    return "ok", "ok"


def transient_status(code: int) -> bool:
    return code >= 500 or code in (408, 429)


async def raise_transient_status(response: httpx.Response) -> None:
    """Raised inside the client's own send, so its retry loop (which sleeps even after its last
    try) never sees these answers; `with_prefect` retries them with a shorter back-off."""
    if transient_status(response.status_code):
        response.raise_for_status()


@dataclass
class KeptClient:
    settings: Any  # the Prefect settings it was made under
    profile: Any
    quiet: Any  # those settings without the client's own retries, in force for each use
    client: PrefectClient


_kept: dict[tuple[asyncio.AbstractEventLoop, int], KeptClient] = {}


def kept_client() -> KeptClient:
    """This event loop's Prefect client for the current Prefect settings, made on first use and kept,
    so a request costs no new connection, no CSRF probe and no copy of the settings (about 30 ms of
    CPU). A client's connections belong to the loop that opened them, and its API URL to the settings
    it was made under (`temporary_settings` may point PREFECT_API_URL elsewhere); clients of a closed loop
    are dropped. Made without an await, so racing requests cannot make two; never entered as a
    context, since it lives as long as the server (an httpx client sends without being entered)."""
    loop = asyncio.get_running_loop()
    context = SettingsContext.get()
    assert context is not None
    for gone in [k for k in _kept if k[0].is_closed()]:
        del _kept[gone]
    kept = _kept.get((loop, id(context.settings)))
    if kept is None or kept.settings is not context.settings:
        quiet = context.settings.copy_with_update(updates={PREFECT_CLIENT_MAX_RETRIES: 0})
        hooks = {"response": [raise_transient_status]}
        # Our own transport: the one Prefect makes retries a refused connection 3 times over 1.5 s,
        # within every request; here `with_prefect` does all the retrying, inside its 2 s.
        transport = httpx.AsyncHTTPTransport(retries=0, limits=PREFECT_LIMITS)
        client = get_client(httpx_settings={"timeout": PREFECT_TIMEOUT, "event_hooks": hooks, "transport": transport})
        kept = KeptClient(context.settings, context.profile, quiet, client)
        _kept[(loop, id(context.settings))] = kept
    return kept


async def with_prefect(operation: Callable[[PrefectClient], Awaitable[Any]], attempts: int = PREFECT_ATTEMPTS) -> Any:
    """Run `operation` with the kept Prefect client, retrying transient failures after the short,
    jittered waits of PREFECT_RETRY_WAITS (`attempts` at most PREFECT_ATTEMPTS). Retrying a run's
    creation is safe: the idempotency key makes a second attempt find the first."""
    kept = kept_client()
    for attempt in range(attempts):
        try:
            # The client's own retries back off for up to a minute; the caller needs an answer
            # sooner, so this loop is the only retry.
            with SettingsContext(profile=kept.profile, settings=kept.quiet):
                return await operation(kept.client)
        except ObjectNotFound:
            raise NotDeployed() from None
        except httpx.HTTPStatusError as error:  # not found is handled above; 401 is a configuration problem
            failure = f"HTTP {error.response.status_code}"
            if not transient_status(error.response.status_code):
                raise PrefectUnavailable(failure) from None
        except httpx.TransportError as error:  # connect errors, timeouts, dropped connections
            failure = type(error).__name__
        logger.warning("Prefect API attempt %d of %d failed (%s)", attempt + 1, attempts, failure)
        if attempt + 1 < attempts:
            await anyio.sleep(random.uniform(*PREFECT_RETRY_WAITS[attempt]))
    raise PrefectUnavailable(failure)


async def access_log_and_last_resort(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Logs method, path (no query) and status of every request, and turns any unforeseen
    exception into a JSON 500 naming only the exception's type. (A FastAPI handler for `Exception`
    would re-raise afterwards, and the server would log the traceback and the exception's message,
    which may quote the body.)"""
    try:
        response = await call_next(request)
    except Exception as error:
        logger.error("unexpected %s answering %s %s", type(error).__name__, request.method, request.url.path)
        detail = f"internal error ({type(error).__name__}); calling again is safe: an event never gets a second run"
        response = JSONResponse({"detail": detail}, status_code=500)
    logger.info("%s %s %s", request.method, request.url.path, response.status_code)
    return response


def run(host: str = "127.0.0.1", port: int = 8000) -> None:
    """Serve the webhook; raises WebhookNotConfigured, before listening, when it could not work."""
    app = create_app(get_settings())
    if not PREFECT_API_URL.value():
        # The client would fall back to a throwaway in-process server no worker ever sees.
        raise WebhookNotConfigured("PREFECT_API_URL is not set; the webhook needs the Prefect server's API URL")
    log_config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    log_config["loggers"][__name__] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    # uvicorn's own access line would add the client address and query string; ours has neither.
    uvicorn.run(app, host=host, port=port, access_log=False, log_config=log_config)
