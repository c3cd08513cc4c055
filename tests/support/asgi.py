"""An ASGI app served over real HTTP from a thread of the test process, for the tests that need
a real socket but not a process of its own (the webhook against a live or a fake Prefect API)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import uvicorn

from tests.support.processes import free_port


@contextmanager
def serving_app(app: Any) -> Iterator[str]:
    """Serves `app` on 127.0.0.1 until the block ends; yields its base URL. The thread runs in a
    copy of this context, so temporary Prefect settings entered around the block reach it."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=contextvars.copy_context().run, args=(server.run,), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not server.started:
            raise RuntimeError(f"the app did not start serving on port {port} within 10 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
