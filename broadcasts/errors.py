"""Why a send did not happen, as exception types an operator can act on.

    DispatchError
    ├── RetryableError            the orchestrator retries (1, 2, 4 … 240 s) until the event expires
    │   ├── AllRoutesFailed       every route (proxy Lambda, CBC) failed this attempt
    │   ├── EarlierEventPending   an earlier event of the broadcast is not yet acknowledged
    │   │                         (recorded once per earlier event as a `waiting_for` history row;
    │   │                         `page_due` once it has lasted past the longest retry interval)
    │   ├── SendInProgress        another run is calling the proxy for this (event, provider)
    │   ├── SendLockLost          the per-message lock was lost before the call; nothing sent
    │   └── DatabaseUnavailable   the database could not be reached or stayed locked
    └── NotSendable               never retried; the record says why
        ├── SendRefused           nothing sent and no identifier allocated; the reason is
        │   │                     appended to `broadcast_event_refusal` (a send already under
        │   │                     way also ends technical-failure with it)
        │   ├── MessageStubbed
        │   ├── ServiceNotLive    inactive or restricted (trial) service
        │   ├── ProviderNotAvailable  not in the service's list ∩ ENABLED_CBCS
        │   ├── BroadcastCancelled    an alert or update written after its broadcast's cancel
        │   ├── CancelAlreadySent     an alert or update whose broadcast's later cancel was
        │   │                         already sent to this provider (a replay after the cancel)
        │   └── DispatchDisabled  CBC_PROXY_ENABLED is false (nothing is read or written)
        ├── InvalidBroadcast      content, areas or finish time break the rules → technical-failure
        ├── EventExpired          its finish time has passed         → technical-failure
        ├── RunCancelled          an operator cancelled its run      → technical-failure
        ├── EarlierEventFailed    an earlier event ended technical-failure → technical-failure
        │   └── EarlierEventRefused   an earlier event was refused for this provider
        ├── EndedTechnicalFailure an automatic run found it technical-failure: only a replay
        │                         sends it again (nothing recorded)
        ├── Superseded            a later cancel of its broadcast stopped this alert or update
        │                         before the network acknowledged it → superseded; not a failure:
        │                         the task and the flow end Completed
        ├── PayloadError          a payload cannot be built from the stored rows
        ├── UnexpectedError       anything else (a bug, a malformed row) → technical-failure
        ├── UnknownEvent
        └── UnknownProvider

    InvalidInput                  bad operator/API input (not a UUID, malformed polygon …)

Messages name the event, the provider and the next command to run.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime


def replay_command(event_id: object, provider: str) -> str:
    return f"broadcasts replay {event_id} {provider}"


class DispatchError(Exception):
    """Base of every reason a provider send did not complete."""


class RetryableError(DispatchError):
    """Worth trying again later. The dispatcher sets which (event, provider) it is about and
    `expires_at`, when retrying must stop (None: never)."""

    event_id: object = None
    provider: str | None = None
    expires_at: datetime | None = None
    # time.monotonic() of the attempt's last answer, where one came: the retry's wait starts there.
    answered_at: float | None = None


def failed_route_name(failure: dict) -> str:
    """`ee-1-proxy/cbc_a`; history written before routes had a CBC target names the function only."""
    return f"{failure['function']}/{failure['cbc_target']}" if failure.get("cbc_target") else failure["function"]


class AllRoutesFailed(RetryableError):
    def __init__(self, failures: list[dict]) -> None:
        self.answered_at = time.monotonic()
        self.failures = failures
        reasons = "; ".join(f"{failed_route_name(f)}: {f['error']}" for f in failures)
        super().__init__(f"every route failed ({reasons})")


class EarlierEventPending(RetryableError):
    # Set by the dispatcher once this wait has lasted past the longest retry interval, on the one
    # attempt that records so: the orchestrator then pages (once per earlier event).
    page_due: bool = False
    waited_seconds: float = 0.0

    def __init__(
        self, event_id: object, provider: str, earlier_event_id: object, earlier_type: str, status: str
    ) -> None:
        self.earlier_event_id, self.earlier_status = earlier_event_id, status
        self.waiting_event_id = event_id
        # What `broadcasts status` shows on the waiting message's history row.
        self.reason = f"waiting for event {earlier_event_id} ({earlier_type}, not yet acknowledged by {provider})"
        super().__init__(f"event {event_id} is {self.reason}; it is {status}")

    def long_wait(self) -> str:
        """The page: how long it has waited, and where to look."""
        return (
            f"event {self.waiting_event_id} has been {self.reason} for {self.waited_seconds:.0f} s, longer "
            f"than the longest retry interval; event {self.earlier_event_id} is {self.earlier_status}: "
            f"see `broadcasts status {self.earlier_event_id}`"
        )


class DatabaseUnavailable(RetryableError):
    def __init__(self, reason: object) -> None:
        super().__init__(f"the database is unavailable ({reason}); will try again")


class SendInProgress(RetryableError):
    def __init__(self, event_id: object, provider: str) -> None:
        super().__init__(f"another run is sending event {event_id} to {provider}; will check again")


class SendLockLost(RetryableError):
    def __init__(self, event_id: object, provider: str) -> None:
        super().__init__(f"the lock for event {event_id} to {provider} was lost before the call (its database "
                         "connection ended); nothing was sent; will try again")


class NotSendable(DispatchError):
    """Retrying cannot help."""


class SendRefused(NotSendable):
    """The send was not allowed: nothing was sent and no identifier allocated. The dispatcher
    records the reason against the event and provider (`broadcast_event_refusal`)."""


class MessageStubbed(SendRefused):
    def __init__(self, event_id: object) -> None:
        super().__init__(f"event {event_id} belongs to a stubbed broadcast message; nothing is sent")


class ServiceNotLive(SendRefused):
    def __init__(self, event_id: object, service_id: object, reason: str) -> None:
        super().__init__(f"event {event_id}: service {service_id} is {reason}; nothing is sent")


class ProviderNotAvailable(SendRefused):
    def __init__(self, event_id: object, provider: str, available: list[str]) -> None:
        super().__init__(
            f"event {event_id}: its service may not use {provider} (available: "
            f"{', '.join(available) or 'none'}); nothing is sent"
        )


class BroadcastCancelled(SendRefused):
    def __init__(self, event_id: object, cancel_event_id: object) -> None:
        super().__init__(
            f"event {event_id} was written after cancel {cancel_event_id} of its broadcast; "
            "a cancelled broadcast is not changed or sent again"
        )


class CancelAlreadySent(SendRefused):
    def __init__(self, event_id: object, provider: str, cancel_event_id: object) -> None:
        super().__init__(
            f"event {event_id} is not sent to {provider}: cancel {cancel_event_id} of its broadcast was "
            f"already sent to {provider}, and nothing of a broadcast may reach a network after its cancel"
        )


class DispatchDisabled(SendRefused):
    def __init__(self) -> None:
        super().__init__("CBC_PROXY_ENABLED is false: nothing is sent")


class InvalidBroadcast(NotSendable):
    def __init__(self, event_id: object, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(f"event {event_id} cannot be broadcast: {'; '.join(problems)}")


class EventExpired(NotSendable):
    def __init__(self, event_id: object, finishes_at: datetime, while_retrying: bool) -> None:
        what = "expired while retrying" if while_retrying else "expired"
        super().__init__(f"event {event_id} {what} (finishes_at {finishes_at.isoformat()})")
        self.reason = what


class RunCancelled(NotSendable):
    """An operator cancelled the run (Cancel in the Prefect UI): its send stops at the next retry
    and only a replay sends it again."""

    def __init__(self, event_id: object, provider: str, run_id: object) -> None:
        super().__init__(
            f"event {event_id} to {provider} stopped: run {run_id} was cancelled by an operator; "
            f"replay with `{replay_command(event_id, provider)}`"
        )


class EarlierEventFailed(NotSendable):
    def __init__(
        self, event_id: object, provider: str, earlier_event_id: object, earlier_expired: bool = False,
        ended: str = "ended technical-failure",
    ) -> None:
        self.earlier_event_id = earlier_event_id
        blocked = f"event {event_id} is blocked for {provider}: earlier event {earlier_event_id} {ended}"
        if earlier_expired:
            # Replaying an expired event can only fail again: say so instead of suggesting it.
            super().__init__(
                f"{blocked} and has expired, so replaying it cannot succeed. This event cannot be sent to "
                f"{provider} in order; ask {provider} whether it holds event {earlier_event_id}"
            )
            return
        super().__init__(
            f"{blocked}. Fix it with `{replay_command(earlier_event_id, provider)}`, then "
            f"`{replay_command(event_id, provider)}`"
        )


class EarlierEventRefused(EarlierEventFailed):
    """The earlier event was refused for this provider (no provider message): it will never be
    sent unless replayed, so waiting for it would wait until this event expired."""

    def __init__(
        self, event_id: object, provider: str, earlier_event_id: object, reason: str, earlier_expired: bool = False
    ) -> None:
        super().__init__(event_id, provider, earlier_event_id, earlier_expired, ended=f"was refused ({reason})")


class EndedTechnicalFailure(NotSendable):
    """Only an operator's replay sends a technical-failure message again; automatic runs (the
    webhook, the event trigger, resume, a UI Retry) report it and leave it alone."""

    def __init__(self, event_id: object, provider: str, last_error: str | None) -> None:
        super().__init__(
            f"event {event_id} ended technical-failure for {provider} ({last_error or 'no error recorded'}); "
            f"an automatic run does not send it again. After fixing the cause: "
            f"`{replay_command(event_id, provider)}`, or `broadcasts send-event {event_id}` for every provider"
        )


class Superseded(NotSendable):
    """A later cancel stopped this alert or update before the network acknowledged it: the
    broadcast is over, so sending it now would only broadcast a cancelled alert. Final for every
    run, replays included, and not a failure (the cancel is what the operator wanted)."""

    def __init__(
        self, event_id: object, provider: str, cancel_event_id: object, provider_message_id: uuid.UUID,
        message_number: int | None,
    ) -> None:
        self.event_id, self.provider, self.cancel_event_id = event_id, provider, cancel_event_id
        self.provider_message_id, self.message_number = provider_message_id, message_number
        # What `broadcasts status` shows on the superseded row.
        # It names no provider, so one run's message says it once for all the providers it shares.
        self.reason = (f"superseded by cancel {cancel_event_id} of its broadcast: not acknowledged before the "
                       "cancel, so no longer sent; the cancel is sent instead")
        super().__init__(f"event {event_id} to {provider} {self.reason}")


class PayloadError(NotSendable):
    """Our data cannot make a valid payload; a bug or a bad row, never the route's fault."""


class UnexpectedError(NotSendable):
    """Not retried: whatever went wrong will go wrong again until someone looks."""

    def __init__(self, event_id: object, provider: str, error: BaseException) -> None:
        super().__init__(
            f"event {event_id} to {provider}: unexpected {type(error).__name__}: {error}. "
            f"After fixing the cause: `{replay_command(event_id, provider)}`"
        )


class UnknownEvent(NotSendable):
    def __init__(self, event_id: object) -> None:
        super().__init__(f"no broadcast event with id {event_id}")


class UnknownProvider(NotSendable):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown provider {name!r}; known: {', '.join(known)}")


class InvalidInput(ValueError):
    """Input from an operator or the service API that is malformed; nothing was written."""
