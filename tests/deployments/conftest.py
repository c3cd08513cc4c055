"""`cli`: the `broadcasts` command run in-process (typer's runner), with ENABLED_CBCS=ee,vodafone."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from deployments.cli import app


@pytest.fixture
def cli(configure):  # type: ignore[no-untyped-def]
    configure(ENABLED_CBCS="ee,vodafone")
    runner = CliRunner()

    def invoke(*args: str):  # type: ignore[no-untyped-def]
        return runner.invoke(app, list(args))

    return invoke
