"""`python -m benchmarks` (or `make bench`): the service end to end on production settings.

It starts everything itself (see `benchmarks/stack.py`): throwaway PostgreSQL databases for the
app and for Prefect on BENCH_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres),
`broadcasts server`, the simulator, `broadcasts db upgrade` and `broadcasts serve` with its
webhook, and stops all of it on every exit. Each figure is printed beside a baseline measured in
the same run, with its target, and written to benchmarks/results/latest.json:

- latency: an alert posted to `broadcasts serve`'s webhook (202; its warm dispatcher runs the
  alert) until the simulator receives the 4th provider call; baseline: the same 4 proxy invokes issued directly in 4 threads; also the flow called in
  this process against the same Prefect server, beside its own baseline: the four sends
  (`dispatch.send_once`, without the provider slot) called in 4 threads with no Prefect run
  around them.
- latency_embedded: the same on `make demo`'s defaults (SQLite app database, Prefect's server
  on SQLite), on a stack of its own started first; `python -m benchmarks embedded` runs it alone.
- latency_serve: the same through `broadcasts serve --no-dispatcher` (Prefect's runner: a poll,
  then a new process per run), against the warm dispatcher of `latency`.
- burst_10: 10 alerts posted at once until the simulator has received all 40 calls.
- fanout_500ms: the same, with every proxy answering 0.5 s late, until the 4th answer; what it adds
  to the latency is one proxy's 0.5 s when the fan-out is parallel, 2 s when it is not.
- burst: 50 events posted at once until all 200 provider messages are acknowledged; baseline:
  200 direct invokes, 4 at a time.
- retry_fidelity: the waits between a failing provider's attempts (an attempt's last answer to the
  next attempt's first call) against the planned schedule.
- cost: database statements per provider send (empty and 10,000-event history) and the peak
  resident memory of the `serve` process tree during the latency run.
- ha: the same latency on the high-availability topology beside the single server's, and the
  recovery after an API replica or a dispatcher is SIGKILLed (benchmarks/ha.py), on a stack of
  its own once the single-server one is stopped. `python -m benchmarks ha` runs it alone.

Targets are reported as met / NOT MET; nothing is asserted.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from benchmarks import ha, measure
from benchmarks.stack import TreeMemory, postgres_version, running_stack

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
HA_LOGS = Path(__file__).resolve().parents[1] / ".ha-bench"  # each part's log, kept for a look after

LATENCY_SAMPLES = 30
EMBEDDED_SAMPLES = 20
SERVE_SAMPLES = 15  # plain serve: seconds each, and only the comparison
BURST_10 = 10
FANOUT_SAMPLES = 12
INPROCESS_SAMPLES = 20
BURST_EVENTS = 50
FANOUT_DELAY = 0.5
RETRY_SCALE = 1.0  # production's schedule: 1, 2, 4, 8 s
RETRY_FAILURES = 4
HISTORY_EVENTS = 10_000


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    started = time.monotonic()
    if argv == ["ha"]:
        print_ha(ha.run(HA_LOGS), None)
        return 0
    if argv == ["embedded"]:
        print_embedded(embedded_latency())
        return 0
    if argv:
        print("usage: python -m benchmarks [ha | embedded]", file=sys.stderr)
        return 2
    embedded = embedded_latency()
    with running_stack() as (stack, exits):
        os.environ.update(stack.app_environment())  # before anything reads settings or imports prefect
        print(f"stack up in {time.monotonic() - started:.1f} s: Prefect {stack.api_url}, "
              f"simulator {stack.simulator_url}", flush=True)
        bench = measure.Bench(stack)
        serve = stack.serve(exits)
        print(f"serve up, webhook {stack.webhook_url}", flush=True)

        for _ in range(2):  # warm-up alerts (first runs import code and open pools), not counted
            bench.alert_latency()

        with TreeMemory(serve.popen.pid) as memory:
            latency = [bench.alert_latency(pause=random.uniform(0.2, 1.5)) for _ in range(LATENCY_SAMPLES)]
        baseline = [bench.direct_fanout() for _ in range(LATENCY_SAMPLES)]
        print(f"latency: {len(latency)} alerts, p50 {_p(latency, 50)} s, p95 {_p(latency, 95)} s, "
              f"baseline p50 {_p(baseline, 50)} s, serve peak RSS {memory.peak_mib:.0f} MiB", flush=True)

        bench.delay_all(FANOUT_DELAY)
        fanout = [bench.alert_latency(pause=random.uniform(0.2, 1.5), answered=True) for _ in range(FANOUT_SAMPLES)]
        fanout_baseline = [bench.direct_fanout(answered=True) for _ in range(FANOUT_SAMPLES)]
        bench.reset_simulator()
        print(f"fan-out: p50 {_p(fanout, 50)} s, baseline p50 {_p(fanout_baseline, 50)} s", flush=True)

        burst_10 = bench.burst_sent(BURST_10)
        print(f"burst of {BURST_10}: all sent in {burst_10:.2f} s", flush=True)
        burst = bench.burst(BURST_EVENTS)
        burst_baseline = bench.direct_burst(BURST_EVENTS * 4, parallel=4)
        print(f"burst: {burst:.1f} s, baseline {burst_baseline:.1f} s, webhook timeouts re-posted: "
              f"{bench.webhook_timeouts}", flush=True)
        serve.stop()

        # The same alerts through Prefect's own runner: a poll, then a new process per run.
        serve = stack.serve(exits, "--no-dispatcher")
        for _ in range(2):
            bench.alert_latency()
        latency_serve = [bench.alert_latency(pause=random.uniform(0.2, 1.5)) for _ in range(SERVE_SAMPLES)]
        print(f"latency, plain serve: p50 {_p(latency_serve, 50)} s, p95 {_p(latency_serve, 95)} s", flush=True)
        serve.stop()  # nothing else consumes faults or slots from here on

        inprocess = bench.inprocess_latency(INPROCESS_SAMPLES)
        sends = bench.direct_sends(INPROCESS_SAMPLES)
        print(f"in-process: p50 {_p(inprocess, 50)} s, the four sends alone {_p(sends, 50)} s", flush=True)
        gaps, planned = bench.retry_gaps(RETRY_SCALE, RETRY_FAILURES)
        statements, statements_history = bench.statements_per_send(HISTORY_EVENTS)

        result = {
            "latency": {**_latency(latency, baseline, inprocess), "inprocess_baseline_p50_s": _p(sends, 50)},
            "latency_embedded": embedded,
            "latency_serve": _latency(latency_serve, baseline, inprocess),
            "burst_10": {"seconds": _round(burst_10)},
            "fanout_500ms": {
                "p50_s": _p(fanout, 50), "baseline_p50_s": _p(fanout_baseline, 50),
                "ratio_p50": _round(_p(fanout, 50) / _p(fanout_baseline, 50), 2),
            },
            "burst": {"seconds": _round(burst), "baseline_seconds": _round(burst_baseline),
                      "ratio": _round(burst / burst_baseline, 2)},
            "retry_fidelity": {
                "max_relative_error": _round(max(abs(g - p) / p for g, p in zip(gaps, planned, strict=True)), 4),
                "per_step": [{"planned_s": p, "observed_s": _round(g), "relative_error": _round((g - p) / p, 4)}
                             for g, p in zip(gaps, planned, strict=True)]},
            "cost": {"statements_per_send": statements, "statements_per_send_10k_history": statements_history,
                     "worker_peak_rss_mib": _round(memory.peak_mib, 1)},
            "machine": {"cores": os.cpu_count(), "prefect": _prefect_version(), "postgresql": postgres_version()},
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        bench.close()
    result["ha"] = ha.run(HA_LOGS)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result, planned, len(latency), len(fanout), len(latency_serve))
    print_embedded(result["latency_embedded"])
    print_ha(result["ha"], result["latency"])
    print(f"\nwritten to {RESULTS.relative_to(Path.cwd()) if RESULTS.is_relative_to(Path.cwd()) else RESULTS}; "
          f"total {time.monotonic() - started:.0f} s")
    return 0


def embedded_latency() -> dict[str, float]:
    """The webhook → 4th call latency on `make demo`'s defaults (SQLite app database, Prefect's
    server on its own SQLite), on a stack of its own."""
    with running_stack(embedded=True) as (stack, exits):
        os.environ.update(stack.app_environment())
        bench = measure.Bench(stack)
        stack.serve(exits)
        try:
            for _ in range(2):
                bench.alert_latency()
            samples = [bench.alert_latency(pause=random.uniform(0.2, 1.5)) for _ in range(EMBEDDED_SAMPLES)]
            baseline = [bench.direct_fanout() for _ in range(EMBEDDED_SAMPLES)]
        finally:
            bench.close()
    print(f"latency, embedded defaults: p50 {_p(samples, 50)} s, p95 {_p(samples, 95)} s", flush=True)
    return {"p50_s": _p(samples, 50), "p95_s": _p(samples, 95), "max_s": _round(max(samples)),
            "baseline_p50_s": _p(baseline, 50), "ratio_p50": _round(_p(samples, 50) / _p(baseline, 50), 2)}


def print_embedded(r: dict) -> None:
    print(f"\nembedded defaults (SQLite app database, Prefect on SQLite): alert latency p50 {r['p50_s']:.3f} s "
          f"(≤ 0.5 s: {_mark(r['p50_s'] <= 0.5)}), p95 {r['p95_s']:.3f} s (≤ 1.0 s: {_mark(r['p95_s'] <= 1.0)}), "
          f"max {r['max_s']:.3f} s; direct 4 invokes {r['baseline_p50_s']:.3f} s")


def _latency(samples: list[float], baseline: list[float], inprocess: list[float]) -> dict[str, float]:
    return {"p50_s": _p(samples, 50), "p95_s": _p(samples, 95), "max_s": _round(max(samples)),
            "baseline_p50_s": _p(baseline, 50), "inprocess_p50_s": _p(inprocess, 50),
            "ratio_p50": _round(_p(samples, 50) / _p(baseline, 50), 2)}


def _prefect_version() -> str:
    import prefect

    return prefect.__version__


def _round(value: float, digits: int = 3) -> float:
    return round(value, digits)


def _p(samples: list[float], percentile: int) -> float:
    return measure.percentile(percentile, samples)


def _mark(ok: bool) -> str:
    return "met" if ok else "NOT MET"


def print_table(r: dict, planned: list[float], n_latency: int, n_fanout: int,
                n_serve: int) -> None:
    lat, fan, burst, retry, cost = r["latency"], r["fanout_500ms"], r["burst"], r["retry_fidelity"], r["cost"]
    plain = r["latency_serve"]
    added = fan["p50_s"] - lat["p50_s"]
    rows = [
        (f"alert latency p50 (webhook 202 → 4th call, n={n_latency})", f"{lat['p50_s']:.3f} s",
         f"direct 4 invokes {lat['baseline_p50_s']:.3f} s", f"{lat['ratio_p50']:.1f}x", "≤ 0.2 s", _mark(lat["p50_s"] <= 0.2)),
        ("alert latency p95", f"{lat['p95_s']:.3f} s", "", "", "≤ 0.4 s", _mark(lat["p95_s"] <= 0.4)),
        ("alert latency max", f"{lat['max_s']:.3f} s", "", "", "", ""),
        (f"same through serve --no-dispatcher p50 (n={n_serve})", f"{plain['p50_s']:.3f} s",
         f"direct 4 invokes {plain['baseline_p50_s']:.3f} s", f"{plain['ratio_p50']:.1f}x", "≤ 2.5 s",
         _mark(plain["p50_s"] <= 2.5)),
        ("same through serve --no-dispatcher p95", f"{plain['p95_s']:.3f} s", "", "", "≤ 3.5 s",
         _mark(plain["p95_s"] <= 3.5)),
        ("10 alerts at once → all 40 calls sent", f"{r['burst_10']['seconds']:.2f} s", "", "", "≤ 3 s",
         _mark(r["burst_10"]["seconds"] <= 3)),
        ("flow in this process p50 (call → 4th call)", f"{lat['inprocess_p50_s']:.3f} s",
         f"the 4 sends alone {lat['inprocess_baseline_p50_s']:.3f} s",
         f"{lat['inprocess_p50_s'] / lat['inprocess_baseline_p50_s']:.1f}x", "≤ 0.15 s",
         _mark(lat["inprocess_p50_s"] <= 0.15)),
        (f"latency to the 4th answer, proxies +0.5 s, p50 (n={n_fanout})", f"{fan['p50_s']:.3f} s",
         f"direct 4 invokes {fan['baseline_p50_s']:.3f} s", f"{fan['ratio_p50']:.1f}x",
         "adds ≤ 0.7 s", f"{_mark(added <= 0.7)} (+{added:.3f} s)"),
        ("burst: 50 events → 200 acknowledged", f"{burst['seconds']:.1f} s",
         f"200 invokes, 4 at a time {burst['baseline_seconds']:.1f} s", f"{burst['ratio']:.1f}x", "≤ 60 s",
         _mark(burst["seconds"] <= 60)),
        ("retry waits vs plan, max error", f"{retry['max_relative_error'] * 100:.1f} %",
         "planned " + "/".join(f"{p:g}" for p in planned) + " s", "", "within 5 %",
         _mark(retry["max_relative_error"] <= 0.05)),
        ("statements per send (empty / 10k history)",
         f"{cost['statements_per_send']} / {cost['statements_per_send_10k_history']}", "", "", "equal",
         _mark(cost["statements_per_send"] == cost["statements_per_send_10k_history"])),
        ("serve process tree peak RSS (latency run)", f"{cost['worker_peak_rss_mib']:.0f} MiB", "", "", "", ""),
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    header = ("measurement", "figure", "baseline", "ratio", "target", "")
    print()
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    print("retry waits, observed against plan: " + ", ".join(
        f"{step['observed_s']:.3f} s for {step['planned_s']:g} s ({step['relative_error'] * 100:+.1f} %)"
        for step in retry["per_step"]))
    m = r["machine"]
    print(f"machine: {m['cores']} cores, Prefect {m['prefect']}, PostgreSQL {m['postgresql']}, at {r['at']}")


def print_ha(r: dict, single: dict | None) -> None:
    lat, recovery = r["latency"], r["recovery_s"]
    beside = f", single server {single['p50_s']:.3f} / {single['p95_s']:.3f} s" if single else ""
    print(f"\nHA topology (2 API replicas on Redis, 2 dispatchers, 2 webhooks): alert latency p50 "
          f"{lat['p50_s']:.3f} s, p95 {lat['p95_s']:.3f} s{beside}; direct 4 invokes {lat['baseline_p50_s']:.3f} s, "
          f"ratio {lat['ratio_p50']:.1f}x")
    print(f"HA recovery, kill → last acknowledgement of a burst of {ha.BURST} around it: API replica "
          f"{recovery['api_replica_killed']:.1f} s, dispatcher {recovery['dispatcher_killed']:.1f} s")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
