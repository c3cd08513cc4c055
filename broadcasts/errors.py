"""Why a send did not happen, as exception types an operator can act on.

    DispatchError
    ├── RetryableError            the orchestrator retries (1, 2, 4 … 240 s) until the event expires
    │   ├── AllRoutesFailed       primary and failover proxy both failed this attempt
    │   ├── EarlierEventPending   an earlier event of the broadcast is not yet acknowledged
    │   │                         (recorded once per earlier event as a `waiting_for` history row)
    │   ├── SendInProgress        another run is calling the proxy for this (event, provider)
    │   └── DatabaseUnavailable   the database could not be reached or stayed locked
    └── NotSendable               never retried; the record says why
        ├── SendRefused           nothing sent and no identifier allocated; the reason is
        │   │                     appended to `broadcast_event_refusal` (a send already under
        │   │                     way also ends technical-failure with it)
        │   ├── MessageStubbed
        │   ├── ServiceNotLive    inactive or restricted (trial) service
        │   ├── ProviderNotAvailable  not in the service's list ∩ ENABLED_CBCS
        │   ├── BroadcastCancelled    an alert or update written after its broadcast's cancel
        │   └── DispatchDisabled  CBC_PROXY_ENABLED is false (nothing is read or written)
        ├── InvalidBroadcast      content, areas or finish time break the rules → technical-failure
        ├── EventExpired          its finish time has passed         → technical-failure
        ├── EarlierEventFailed    an earlier event ended technical-failure → technical-failure
        ├── PayloadError          a payload cannot be built from the stored rows
        ├── UnexpectedError       anything else (a bug, a malformed row) → technical-failure
        ├── UnknownEvent
        └── UnknownProvider

    InvalidInput                  bad operator/API input (not a UUID, malformed polygon …)

Messages name the event, the provider and the next command to run.
"""

from __future__ import annotations

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


class AllRoutesFailed(RetryableError):
    def __init__(self, failures: list[dict]) -> None:
        self.failures = failures
        reasons = "; ".join(f"{f['function']}: {f['error']}" for f in failures)
        super().__init__(f"every route failed ({reasons})")


class EarlierEventPending(RetryableError):
    def __init__(
        self, event_id: object, provider: str, earlier_event_id: object, earlier_type: str, status: str
    ) -> None:
        self.earlier_event_id = earlier_event_id
        # What `broadcasts status` shows on the waiting message's history row.
        self.reason = f"waiting for event {earlier_event_id} ({earlier_type}, not yet acknowledged by {provider})"
        super().__init__(f"event {event_id} is {self.reason}; it is {status}")


class DatabaseUnavailable(RetryableError):
    def __init__(self, reason: object) -> None:
        super().__init__(f"the database is unavailable ({reason}); will try again")


class SendInProgress(RetryableError):
    def __init__(self, event_id: object, provider: str) -> None:
        super().__init__(f"another run is sending event {event_id} to {provider}; will check again")


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


class EarlierEventFailed(NotSendable):
    def __init__(self, event_id: object, provider: str, earlier_event_id: object, earlier_expired: bool = False) -> None:
        self.earlier_event_id = earlier_event_id
        blocked = f"event {event_id} is blocked for {provider}: earlier event {earlier_event_id} ended technical-failure"
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
