"""Status page cost: rendering ``GET /``, the history ring's memory and one stream message.

* ``render``: :func:`agent.status_page.render_page` for a busy host (every catalog metric,
  three conditions, 25 events, 10 runs of two decisions) with a full hour of history;
  this thread's CPU time per page, median of the repeats.
* ``history``: bytes the full ring (5 series x 360 points) holds, by ``tracemalloc``.
* ``fan-out``: CPU time to turn one event into a stream message and queue it for 32
  clients (the most served), median per event.

Prints the figures and writes bench/results/status_page.json.

Usage: python -m bench.status_page [--repeat 200]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from pathlib import Path

from agent.api_stream import CLIENT_QUEUE, MAX_CLIENTS, StreamClient, StreamMessage
from agent.history import HISTORY_INTERVAL, SERIES, MetricHistory
from agent.status_page import PageData, render_page
from agent.status_summary import node_summary
from tests.unit.fake_view import T0, busy_view, make_event
from tests.unit.test_status_page import RUN

RESULTS = Path(__file__).resolve().parent / "results"


def _full_history() -> MetricHistory:
    history = MetricHistory()
    for i in range(history.capacity):
        history.record(T0 + i * HISTORY_INTERVAL, {spec.key: float(i % 100) for spec in SERIES})
    return history


def _cpu_median(action: object, repeat: int) -> float:
    assert callable(action)
    times = []
    for _ in range(repeat):
        start = time.thread_time()
        action()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=200)
    args = parser.parse_args()

    view = busy_view()
    view.stored_events = [make_event(n) for n in range(1, 26)]
    history = _full_history()
    now = T0 + history.capacity * HISTORY_INTERVAL
    runs = [RUN] * 10

    def render() -> str:
        summary = node_summary(view, None, version="bench", started=T0, now=now)
        return render_page(
            PageData(
                summary=summary,
                history=history,
                now=now,
                runs=runs,
                events=view.events(type=None, since=None, limit=25),
            )
        )

    page_bytes = len(render().encode())
    render_s = _cpu_median(render, args.repeat)

    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = _full_history()
    history_bytes = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert kept.capacity == len(kept.points("cpu"))

    resync = StreamMessage("resync", "{}")
    clients = [
        StreamClient(maxsize=CLIENT_QUEUE, resync=lambda: resync) for _ in range(MAX_CLIENTS)
    ]
    event = make_event(1)

    def fan_out() -> None:
        message = StreamMessage.of_event(event)
        for client in clients:
            client.offer(message)

    fan_out_s = _cpu_median(fan_out, args.repeat)

    figures = {
        "render_ms": round(render_s * 1000, 3),
        "page_bytes": page_bytes,
        "history_bytes": history_bytes,
        "fan_out_32_clients_us": round(fan_out_s * 1e6, 1),
    }
    print(f"render GET / (busy host, full hour): {figures['render_ms']} ms CPU, {page_bytes} bytes")
    print(f"history ring (5 series x 360 points): {history_bytes} bytes")
    print(f"one event to {MAX_CLIENTS} stream clients: {figures['fan_out_32_clients_us']} us CPU")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "status_page.json").write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
