"""expire-broadcasts: mark every broadcast past its finish time completed, calling no proxy (the
networks hold the finish time already), and record it in the message's history
(docs/behaviour.md §7; the rules are in broadcasts/expiry.py). Safe with any number of copies at
once: each message is completed by one of them."""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.states import Completed, Failed, State

from broadcasts.db import TRANSIENT_DATABASE_ERRORS, get_engine
from broadcasts.expiry import expire_finished_broadcasts
from broadcasts.models import utcnow
from broadcasts.settings import get_settings

FLOW_NAME = "expire-broadcasts"
ARTIFACT_KEY = "expire-broadcasts"

EXPIRY_DESCRIPTION = (
    "Every EXPIRY_INTERVAL_SECONDS: mark each broadcasting message whose finishes_at has passed "
    "as completed, with a row in its history. Calls no CBC proxy: the networks already hold the "
    "finish time. Never touches a cancelled, failed or draft message, or the provider messages. "
    "Safe to run at any time, also two at once: each message is completed once."
)


@flow(name=FLOW_NAME, description=EXPIRY_DESCRIPTION)
def expire_broadcasts() -> State:
    logger = get_run_logger()
    settings = get_settings()
    if not settings.cbc_proxy_enabled:
        logger.info("CBC_PROXY_ENABLED is false: no broadcast is completed")
        return Completed(message="dispatch disabled: nothing completed", data=[])
    try:
        expired = expire_finished_broadcasts(get_engine(settings.database_url), utcnow())
    except TRANSIENT_DATABASE_ERRORS as error:  # the next run completes them
        return Failed(message=f"nothing completed: the database is unavailable ({type(error).__name__})")

    for message in expired:
        logger.info("completed broadcast message %s (service %s): %s",
                    message.broadcast_message_id, message.service_id, message.reason)
    rows = [message.as_row() for message in expired]
    if rows:  # a run every minute: an artifact only when there is something to show
        create_table_artifact(key=ARTIFACT_KEY, table=rows,
                              description="Broadcast messages completed: their finishes_at had passed")
    return Completed(message=f"completed {len(rows)} expired broadcast message{'' if len(rows) == 1 else 's'}",
                     data=rows)
