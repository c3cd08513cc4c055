"""The named queries the dispatcher relies on, against the real test database."""

from __future__ import annotations

import ast
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, text
from sqlalchemy.event import listen, remove

from broadcasts import dao
from broadcasts.cbc_proxy import CBCProxy
from broadcasts.db import unit_of_work
from broadcasts.link_tests import link_test_route
from broadcasts.models import (
    BroadcastEvent,
    BroadcastProviderMessage,
    BroadcastProviderMessageNumber,
    BroadcastProviderMessageStatus,
    LinkTestResult,
    Service,
    utcnow,
)
from tests.factories import make_alert, make_event, make_message, make_service

ENABLED = ["ee", "three", "o2", "vodafone"]


def test_earlier_events_are_the_strictly_earlier_ones_oldest_first(engine):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    noon = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    ids = {
        hour: make_event(engine, service_id, message_id, sent_at=noon + timedelta(hours=hour - 12))
        for hour in (15, 12, 14, 13)  # written out of order on purpose
    }
    make_event(engine, service_id, make_message(engine, service_id), sent_at=noon)  # another message
    with unit_of_work(engine) as session:
        earlier = dao.earlier_events(session, dao.get_event(session, ids[14]))
        first = dao.earlier_events(session, dao.get_event(session, ids[12]))
    assert [e.id for e in earlier] == [ids[12], ids[13]]
    assert first == []


def written_apart() -> None:
    """Lets the database clock move on (SQLite's counts milliseconds), so two rows written one
    after the other get different creation times."""
    time.sleep(0.005)


def test_of_two_events_with_the_same_sent_at_the_one_written_first_is_earlier(engine):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    moment = utcnow()
    first = make_event(engine, service_id, message_id, sent_at=moment)
    written_apart()
    second = make_event(engine, service_id, message_id, sent_at=moment)
    with unit_of_work(engine) as session:
        assert dao.earlier_events(session, dao.get_event(session, first)) == []
        assert [e.id for e in dao.earlier_events(session, dao.get_event(session, second))] == [first]


def test_the_database_sets_when_an_event_was_written_for_a_writer_that_does_not(engine):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    sent_at = utcnow()
    ids = [uuid.uuid4(), uuid.uuid4()]
    for event_id in ids:  # as the service's API writes it: no created_at
        with unit_of_work(engine) as session:
            if engine.dialect.name == "postgresql":  # a writer's session in another time zone
                session.execute(text("SET LOCAL TIME ZONE 'Pacific/Auckland'"))
            session.execute(insert(BroadcastEvent.__table__).values(
                id=event_id, service_id=service_id, broadcast_message_id=message_id, sent_at=sent_at,
                message_type="alert", transmitted_areas={"names": [], "simple_polygons": []}))
        written_apart()
    with unit_of_work(engine) as session:
        created = [session.get_one(BroadcastEvent, event_id).created_at for event_id in ids]
        later = dao.earlier_events(session, session.get_one(BroadcastEvent, ids[1]))
    assert created[0] < created[1]
    assert abs(created[0] - sent_at) < timedelta(minutes=1)  # naive UTC, like every other time
    assert [e.id for e in later] == [ids[0]]


def test_no_service_provider_rows_means_every_enabled_provider_in_enabled_order(engine):
    service_id = make_service(engine)
    with unit_of_work(engine) as session:
        assert dao.available_providers(session, service_id, ENABLED) == ENABLED
        assert dao.available_providers(session, service_id, ["vodafone", "ee"]) == ["vodafone", "ee"]


def test_service_provider_rows_restrict_the_providers(engine):
    service_id = make_service(engine, providers=["vodafone"])
    with unit_of_work(engine) as session:
        assert dao.available_providers(session, service_id, ENABLED) == ["vodafone"]


def test_service_providers_outside_the_enabled_set_leave_none(engine):
    service_id = make_service(engine, providers=["three"])
    with unit_of_work(engine) as session:
        assert dao.available_providers(session, service_id, ["ee", "vodafone"]) == []


def test_channel_defaults_to_test_without_a_settings_row(engine):
    without, government = make_service(engine, channel=None), make_service(engine, channel="government")
    with unit_of_work(engine) as session:
        assert dao.channel(session.get_one(Service, without)) == "test"
        assert dao.channel(session.get_one(Service, government)) == "government"


def test_an_event_is_read_with_its_services_networks_and_channel_in_one_statement(engine):
    service_id = make_service(engine, providers=["vodafone", "ee"], channel="severe")
    event_id = make_event(engine, service_id, make_message(engine, service_id))
    statements = []

    def record(connection, cursor, statement, *rest):  # type: ignore[no-untyped-def]
        statements.append(statement)

    listen(engine, "before_cursor_execute", record)
    try:
        with unit_of_work(engine) as session:
            event = dao.get_event(session, event_id)
            assert (dao.service_providers(event.service, ENABLED), dao.channel(event.service)) == (
                ["ee", "vodafone"], "severe")
    finally:
        remove(engine, "before_cursor_execute", record)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1, statements


def test_earlier_events_and_later_cancels_follow_sent_at_then_creation_then_id(engine):
    service_id = make_service(engine)
    message_id = make_message(engine, service_id)
    noon = utcnow().replace(hour=12, minute=0, second=0, microsecond=0)
    ids = []
    for hour, message_type in [(12, "alert"), (13, "update"), (14, "cancel"), (14, "update"), (15, "cancel"),
                               (11, "cancel")]:
        ids.append(make_event(engine, service_id, message_id, sent_at=noon + timedelta(hours=hour - 12),
                              message_type=message_type))
        written_apart()  # the two at 14:00 are ordered by when they were written
    # Two more at 16:00 written with the same creation time (as migrated rows are): ordered by id.
    tied = sorted([uuid.uuid4(), uuid.uuid4()])
    with unit_of_work(engine) as session:
        for event_id, message_type in zip(reversed(tied), ["cancel", "update"]):  # the larger id first
            session.execute(insert(BroadcastEvent.__table__).values(
                id=event_id, service_id=service_id, broadcast_message_id=message_id,
                sent_at=noon + timedelta(hours=4), created_at=noon + timedelta(hours=4), message_type=message_type,
                transmitted_areas={"names": [], "simple_polygons": []}))
    make_event(engine, service_id, make_message(engine, service_id), sent_at=noon, message_type="cancel")

    def around(event_id):  # type: ignore[no-untyped-def]
        with unit_of_work(engine) as session:
            earlier, later_cancels = dao.earlier_events_and_later_cancels(session, dao.get_event(session, event_id))
        return [e.id for e in earlier], {e.id for e in later_cancels}

    alert_12, update_13, cancel_14, update_14, cancel_15, cancel_11 = ids[0], ids[1], ids[2], ids[3], ids[4], ids[5]
    assert around(update_13) == ([cancel_11, alert_12], {cancel_14, cancel_15, tied[1]})
    assert around(update_14) == ([cancel_11, alert_12, update_13, cancel_14], {cancel_15, tied[1]})
    assert around(tied[0]) == ([cancel_11, alert_12, update_13, cancel_14, update_14, cancel_15], {tied[1]})
    assert around(tied[1]) == ([cancel_11, alert_12, update_13, cancel_14, update_14, cancel_15, tied[0]], set())
    assert around(cancel_11) == ([], {cancel_14, cancel_15, tied[1]})


def test_get_or_create_makes_one_message_with_a_number_and_a_sending_row_then_reuses_it(engine):
    _, _, event_id = make_alert(engine)
    with unit_of_work(engine) as session:
        first = dao.get_or_create_provider_message(session, event_id, "vodafone", numbered=True)
    with unit_of_work(engine) as session:
        again = dao.get_or_create_provider_message(session, event_id, "vodafone", numbered=True)
        rows = dao.history(session, first.id)
    assert again.id == first.id
    assert first.status == "sending"
    assert first.number is not None and again.number.broadcast_provider_message_number == first.number.broadcast_provider_message_number
    assert [r.status for r in rows] == ["sending"]


def test_cap_providers_get_no_message_number(engine):
    _, _, event_id = make_alert(engine)
    with unit_of_work(engine) as session:
        message = dao.get_or_create_provider_message(session, event_id, "ee", numbered=False)
    assert message.number is None


def test_two_racing_get_or_create_calls_make_one_row_and_one_number(engine):
    """The first caller inserts and holds its transaction open; the second arrives in between.
    Exactly one row wins and the loser reads the winner's row."""
    _, _, event_id = make_alert(engine)
    inserted = threading.Event()
    results: dict[str, object] = {}

    def winner() -> None:
        with unit_of_work(engine) as session:
            results["winner"] = dao.get_or_create_provider_message(session, event_id, "vodafone", True).id
            inserted.set()
            time.sleep(0.5)  # keep the transaction open while the other caller runs

    def loser() -> None:
        inserted.wait(5)
        with unit_of_work(engine) as session:
            results["loser"] = dao.get_or_create_provider_message(session, event_id, "vodafone", True).id

    threads = [threading.Thread(target=winner), threading.Thread(target=loser)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert results["winner"] == results["loser"]
    with unit_of_work(engine) as session:
        messages = session.scalar(select(func.count()).select_from(BroadcastProviderMessage).where(
            BroadcastProviderMessage.broadcast_event_id == event_id))
        numbers = session.scalar(select(func.count()).select_from(BroadcastProviderMessageNumber).where(
            BroadcastProviderMessageNumber.broadcast_provider_message_id == results["winner"]))
        sending_rows = len(dao.history(session, results["winner"]))
    assert (messages, numbers, sending_rows) == (1, 1, 1)


def test_many_concurrent_get_or_create_calls_agree_on_one_row(engine):
    _, _, event_id = make_alert(engine)
    barrier = threading.Barrier(8)
    ids = []

    def call() -> None:
        barrier.wait(5)
        with unit_of_work(engine) as session:
            ids.append(dao.get_or_create_provider_message(session, event_id, "vodafone", True).id)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(ids) == 8 and len(set(ids)) == 1


class _AcceptingLambda:
    """A Lambda client that accepts every call (link tests here only need the sequence)."""

    def invoke(self, **_kwargs):  # type: ignore[no-untyped-def]
        import io

        return {"StatusCode": 200, "Payload": io.BytesIO(b"{}")}


def test_message_numbers_strictly_increase_and_are_shared_with_link_tests(engine):
    proxy = CBCProxy(_AcceptingLambda())
    numbers = []
    for round_ in range(3):
        _, _, event_id = make_alert(engine)
        with unit_of_work(engine) as session:
            message = dao.get_or_create_provider_message(session, event_id, "vodafone", numbered=True)
            numbers.append(("message", message.number.broadcast_provider_message_number))
        link_test_route(engine, proxy, "vodafone", "lambda1-cbc_a")
        with unit_of_work(engine) as session:
            result = session.scalars(select(LinkTestResult).order_by(LinkTestResult.id.desc())).first()
            numbers.append(("link test", result.message_number))
    values = [n for _, n in numbers]
    assert values == sorted(values) and len(set(values)) == len(values), numbers
    assert {kind for kind, _ in numbers} == {"message", "link test"}


def test_link_test_rows_name_the_route_and_the_proxy_function(engine):
    proxy = CBCProxy(_AcceptingLambda(), function_prefix="arn:aws:lambda:eu-west-2:1:function:")
    for route in ("lambda1-cbc_b", "lambda2-cbc_a"):
        link_test_route(engine, proxy, "ee", route)
    with unit_of_work(engine) as session:
        rows = session.scalars(select(LinkTestResult).order_by(LinkTestResult.id.desc()).limit(2)).all()
    assert [(r.provider, r.route, r.ok, {k: v for k, v in r.detail.items() if k != "latency_ms"})
            for r in reversed(rows)] == [
        ("ee", "lambda1-cbc_b", True, {"function": "arn:aws:lambda:eu-west-2:1:function:ee-1-proxy",
                                       "cbc_target": "cbc_b"}),
        ("ee", "lambda2-cbc_a", True, {"function": "arn:aws:lambda:eu-west-2:1:function:ee-2-proxy",
                                       "cbc_target": "cbc_a"}),
    ]


def test_append_status_adds_history_and_updates_the_current_status_together(engine):
    _, _, event_id = make_alert(engine)
    with unit_of_work(engine) as session:
        message = dao.get_or_create_provider_message(session, event_id, "ee", numbered=False)
        dao.append_status(session, message, "returned-error", attempt=1, detail={"error": "boom"})
        dao.append_status(session, message, "returned-ack", route="ee-2-proxy", attempt=2)
    with unit_of_work(engine) as session:
        rows = dao.history(session, message.id)
        assert dao.current_status(session, message.id) == "returned-ack" == rows[-1].status
        assert [(r.status, r.attempt) for r in rows] == [("sending", None), ("returned-error", 1), ("returned-ack", 2)]
        assert dao.attempts_so_far(session, message.id) == 2


def test_nothing_in_the_code_updates_or_deletes_status_history():
    """The history is append-only by construction: no module issues update() or delete() on it."""
    offenders = []
    for path in Path("broadcasts").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) in {"update", "delete"}:
                names = {getattr(a, "id", "") for a in node.args}
                if BroadcastProviderMessageStatus.__name__ in names:
                    offenders.append(f"{path}:{node.lineno}")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value.lower()
                if "broadcast_provider_message_status" in text and ("update " in text or "delete " in text):
                    offenders.append(f"{path}:{node.lineno}")
    assert offenders == []
