"""`make ha-demo`: the high-availability topology on this machine (README, "High availability"),
an alert through each webhook, then one API replica and one dispatcher SIGKILLed and one more
alert, acknowledged by every network. It stops everything it started, however it ends; each
part's log is in .ha-demo/<part>.log."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.support.ha_stack import PREFERENCE, HAStack, running_ha_stack
from tests.support.processes import BROADCASTS, ROOT

DIRECTORY = ROOT / ".ha-demo"


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def broadcasts(ha: HAStack, client: str, *args: str, capture: bool = False) -> str:
    """A `broadcasts` command with the settings of `client` (its list of replicas)."""
    done = subprocess.run([BROADCASTS, *args], cwd=ROOT, env=ha.app_environment(PREFERENCE[client]),
                          capture_output=capture, text=True)
    if done.returncode != 0:
        sys.exit(f"ha-demo: `broadcasts {' '.join(args)}` failed{': ' + done.stderr if capture else ''}")
    return done.stdout


def alert(ha: HAStack, webhook: str, body: str) -> float:
    created = json.loads(broadcasts(ha, webhook, "event", "create", "--type", "alert", "--channel", "severe",
                                    "--json", "--body", body, "--finishes-in", "2h",
                                    "--polygon", "51.50,-0.12 51.52,-0.12 51.52,-0.10 51.50,-0.10", capture=True))
    started = time.monotonic()
    broadcasts(ha, webhook, "trigger", created["broadcast_event_id"], "--url", ha.webhook_urls[webhook], "--wait")
    return time.monotonic() - started


def main() -> None:
    step("Start the topology: Redis, 2 Prefect API replicas on one PostgreSQL database, the services "
         "process, 2 dispatchers, 2 webhooks, the simulator")
    started = time.monotonic()
    with running_ha_stack(directory=DIRECTORY) as ha:
        print(f"  up in {time.monotonic() - started:.0f} s; logs in {DIRECTORY.relative_to(ROOT)}/")
        for name, process in ha.processes.items():
            where = ha.api_urls.get(name) or ha.webhook_urls.get(name) or ""
            lists = " → ".join(PREFERENCE[name]) if name in PREFERENCE else ""
            print(f"  {name:<13} pid {process.popen.pid:<8} {where:<32} {lists}")

        step("An alert through webhook-1 (api-a first)")
        alert(ha, "webhook-1", "Flood warning: move to higher ground now.")
        step("An alert through webhook-2 (api-b first)")
        alert(ha, "webhook-2", "Flood warning: stay away from the river.")

        step("SIGKILL api-a and dispatcher-2")
        ha.kill("api-a")
        ha.kill("dispatcher-2")
        print("  webhook-1 and dispatcher-1 list api-a first: they must move to api-b")
        step("An alert through webhook-1, with one replica and one dispatcher dead")
        took = alert(ha, "webhook-1", "Flood warning: the river has burst its banks.")
        print(f"\n  acknowledged by every network {took:.1f} s after the post")
        step("Stop everything")
    print("  stopped")


if __name__ == "__main__":
    main()
