"""The service commands an operator runs by hand: link-test (now and history) and trigger."""

from __future__ import annotations

import json

from tests.deployments.test_cli import create_alert


def test_link_test_prints_every_route_and_fails_when_one_does(cli, configure, engine, sim, prefect_server):
    configure(ENABLED_CBCS="ee,vodafone")
    passed = cli("link-test")
    assert passed.exit_code == 0, passed.output
    assert passed.stdout.splitlines()[0] == "Completed: 8 routes ok"
    routes = ["lambda1-cbc_a", "lambda1-cbc_b", "lambda2-cbc_a", "lambda2-cbc_b"]
    assert [line.split()[:3] for line in passed.stdout.splitlines()[1:]] == [
        [provider, route, "ok"] for provider in ("ee", "vodafone") for route in routes]

    sim.fault("vodafone-2-proxy", http_status=500, cbc_target="cbc_b", times=1)
    failed = cli("link-test", "--provider", "vodafone", "--json")
    assert failed.exit_code == 1
    answer = json.loads(failed.stdout)
    assert answer["state"] == "Failed" and "vodafone lambda2-cbc_b" in answer["message"]
    assert [(r["route"], r["ok"]) for r in answer["routes"]] == [(route, route != "lambda2-cbc_b") for route in routes]

    history = cli("link-test", "--history", "--provider", "vodafone", "--since", "1h")
    assert history.exit_code == 0, history.output
    failing = next(line for line in history.stdout.splitlines() if "lambda2-cbc_b" in line)
    assert "failing 1 in a row: HTTP 500" in failing
    records, advice = history.stdout.split("route advisor")
    # One of the routes that passed (they ran in parallel), never the one that failed.
    [advised] = [line.split() for line in advice.splitlines()[1:]]
    assert advised[0] == "vodafone" and advised[1] in {
        "vodafone-1-proxy/cbc_a", "vodafone-1-proxy/cbc_b", "vodafone-2-proxy/cbc_a"}, advice


def test_trigger_without_a_reachable_webhook_is_one_line(cli, configure, engine):
    configure(WEBHOOK_SECRET="s" * 32)
    event_id = create_alert(cli)["broadcast_event_id"]
    result = cli("trigger", event_id, "--url", "http://127.0.0.1:1")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: cannot reach the webhook at http://127.0.0.1:1") and "Traceback" not in result.output


def test_bootstrap_with_a_notification_block_that_does_not_exist_is_one_line(cli, configure, prefect_server):
    configure(ALERT_NOTIFICATION_BLOCK="slack-webhook/nobody")
    result = cli("bootstrap")
    assert result.exit_code == 2
    assert "'slack-webhook/nobody', which does not exist" in result.stderr and "Traceback" not in result.output


def test_link_test_of_an_unknown_provider_is_bad_input(cli, engine):
    result = cli("link-test", "--provider", "orange")
    assert result.exit_code == 2 and "unknown provider 'orange'" in result.stderr
