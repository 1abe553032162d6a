"""
Counters and one latency histogram for ``serve``, rendered in the Prometheus text format.

Each process keeps its own :class:`Metrics`; with several workers the coordinator merges their
:meth:`Metrics.snapshot` dictionaries (plain JSON) so ``/metrics`` on any worker shows the sum.
Counting is a dict increment, cheap enough for every request.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

# Upstream fetches take from a few milliseconds (a local origin) to a minute (total_timeout).
BUCKETS: tuple[float, ...] = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

# name -> (type, help, label names)
FAMILIES: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "mirror_requests_total": (
        "counter",
        "Requests answered, by route and status.",
        ("route", "status"),
    ),
    "mirror_cache_hits_total": ("counter", "Proxy requests answered from the store.", ()),
    "mirror_cache_misses_total": ("counter", "Proxy requests the store could not answer.", ()),
    "mirror_coalesced_waiters_total": (
        "counter",
        "Requests that waited for another request's upstream fetch.",
        (),
    ),
    "mirror_negative_cache_hits_total": (
        "counter",
        "Requests answered from a remembered failure without fetching.",
        (),
    ),
    "mirror_upstream_fetches_total": (
        "counter",
        "Upstream fetches, by outcome and reason.",
        ("outcome", "reason"),
    ),
    "mirror_served_bytes_total": ("counter", "Body bytes sent to clients.", ()),
    "mirror_evicted_objects_total": ("counter", "Open-mode objects evicted.", ()),
    # Several serve nodes over one PostgreSQL manifest (mirror.resolver's shared mode).
    "mirror_lease_waits_total": (
        "counter",
        "Misses that waited for another serve node's fetch lease.",
        (),
    ),
    "mirror_lease_renewals_total": (
        "counter",
        "Renewals of a fetch lease while a fetch slower than the lease's TTL ran.",
        (),
    ),
    "mirror_evictions_skipped_total": (
        "counter",
        "Evictions left to the serve node holding the eviction lease.",
        (),
    ),
}
HISTOGRAM = "mirror_fetch_seconds"
HISTOGRAM_HELP = "Time of one upstream fetch, verification and store included."

Labels = tuple[str, ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Iterable[str], values: Iterable[str]) -> str:
    pairs = [f'{name}="{_escape(value)}"' for name, value in zip(names, values, strict=True)]
    return "{" + ",".join(pairs) + "}" if pairs else ""


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return str(int(value)) if float(value).is_integer() else repr(value)


class Metrics:
    """One process's counters; ``inc`` and ``observe`` are all the hot paths call."""

    def __init__(self) -> None:
        self.counters: dict[str, dict[Labels, float]] = {name: {} for name in FAMILIES}
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.seconds = 0.0

    def inc(self, name: str, labels: Labels = (), by: float = 1) -> None:
        """Add ``by`` to a counter; ``labels`` are the values of its label names, in order."""
        counter = self.counters[name]
        counter[labels] = counter.get(labels, 0) + by

    def observe(self, seconds: float) -> None:
        """Record one fetch's duration in the histogram."""
        index = next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))
        self.buckets[index] += 1
        self.seconds += seconds

    def snapshot(self) -> dict[str, Any]:
        """Return the counters as JSON-ready data, for merging across processes."""
        return {
            "counters": {
                name: [[list(labels), value] for labels, value in counter.items()]
                for name, counter in self.counters.items()
            },
            "buckets": list(self.buckets),
            "seconds": self.seconds,
        }


def merge(snapshots: Iterable[Mapping[str, Any]]) -> Metrics:
    """Sum several :meth:`Metrics.snapshot` results into one :class:`Metrics`."""
    total = Metrics()
    for snap in snapshots:
        for name, items in snap.get("counters", {}).items():
            if name in total.counters:
                for labels, value in items:
                    total.inc(name, tuple(labels), value)
        for index, count in enumerate(snap.get("buckets", [])[: len(total.buckets)]):
            total.buckets[index] += count
        total.seconds += snap.get("seconds", 0.0)
    return total


def render(metrics: Metrics, gauges: Mapping[str, tuple[str, float]] | None = None) -> str:
    """Return the Prometheus text of ``metrics`` plus ``gauges`` (name -> (help, value))."""
    lines: list[str] = []
    for name, (kind, text, label_names) in FAMILIES.items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        counter = metrics.counters[name]
        if not counter and not label_names:
            lines.append(f"{name} 0")
        for labels, value in sorted(counter.items()):
            lines.append(f"{name}{_labels(label_names, labels)} {_number(value)}")
    lines += [f"# HELP {HISTOGRAM} {HISTOGRAM_HELP}", f"# TYPE {HISTOGRAM} histogram"]
    cumulative = 0
    for bound, count in zip((*BUCKETS, math.inf), metrics.buckets, strict=True):
        cumulative += count
        lines.append(f'{HISTOGRAM}_bucket{{le="{_number(bound)}"}} {cumulative}')
    lines += [f"{HISTOGRAM}_sum {_number(metrics.seconds)}", f"{HISTOGRAM}_count {cumulative}"]
    for name, (text, value) in (gauges or {}).items():
        lines += [f"# HELP {name} {text}", f"# TYPE {name} gauge", f"{name} {_number(value)}"]
    return "\n".join(lines) + "\n"
