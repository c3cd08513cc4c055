"""A Runner that fails to start (seen in the HA suite: its events socket refused while an API
replica restarted) is made again after a wait while the dispatcher goes on, instead of ending
`broadcasts serve`. The Runner here is a stand-in whose start fails as Prefect's does; the
served stack's own starts are covered by test_serve.py and the HA suite."""

from __future__ import annotations

import logging

import httpx
import pytest

from deployments.serve import run_runner

START_FAILED = "Runner failed to start: event_emitter — did not receive a valid HTTP response"


class Runner:
    def __init__(self, starts: list["Runner"], error: BaseException | None) -> None:
        self.starts, self.error = starts, error

    async def start(self) -> None:
        self.starts.append(self)
        if self.error is not None:
            raise self.error


def test_a_runner_that_fails_to_start_is_made_again_after_each_wait_until_one_runs(caplog):
    starts: list[Runner] = []
    made = iter([Runner(starts, RuntimeError(START_FAILED)), Runner(starts, None)])
    with caplog.at_level(logging.WARNING, logger="deployments.serve"):
        run_runner(Runner(starts, RuntimeError(START_FAILED)), lambda: next(made), waits=(0.01, 0.02))
    assert [runner.error is None for runner in starts] == [False, False, True]
    assert [r.getMessage().split("; ")[1] for r in caplog.records] == [
        "the Runner (schedules, link tests, resume) starts again in 0.01 s, the dispatcher serving alerts meanwhile",
        "the Runner (schedules, link tests, resume) starts again in 0.02 s, the dispatcher serving alerts meanwhile"]
    assert START_FAILED in caplog.records[0].getMessage()


def test_the_api_still_gone_while_registering_again_waits_again():
    starts: list[Runner] = []
    calls = []

    def make() -> Runner:
        calls.append(1)
        if len(calls) == 1:
            raise httpx.ConnectError("All connection attempts failed")
        return Runner(starts, None)

    run_runner(Runner(starts, RuntimeError(START_FAILED)), make, waits=(0.01,))
    assert len(calls) == 2 and len(starts) == 2 and starts[-1].error is None


def test_any_other_error_ends_serve_as_before():
    with pytest.raises(RuntimeError, match="a bug"):
        run_runner(Runner([], RuntimeError("a bug")), lambda: pytest.fail("made again"), waits=(0.01,))


def test_a_signal_while_it_runs_ends_it_without_another_start():
    def interrupted() -> Runner:
        raise AssertionError("made again")

    starts: list[Runner] = []
    run_runner(Runner(starts, KeyboardInterrupt()), interrupted, waits=(0.01,))
    assert len(starts) == 1
