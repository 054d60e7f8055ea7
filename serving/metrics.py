"""Service metrics, registered once per process with prometheus_client and served on BentoML's /metrics.

BentoML runs workers in prometheus_client's multiprocess mode, so /metrics adds up all workers.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DECISIONS = Counter(
    "nexttouch_decisions",
    "Decisions answered, by action and by whether the answer was a rule-based fallback.",
    ["action", "fallback"],
)
FALLBACKS = Counter("nexttouch_fallbacks", "Rule-based fallback answers, by cause.", ["cause"])
CAPACITY_REFUSED = Counter(
    "nexttouch_capacity_refused", "Scarce actions refused because their capacity was used up.", ["action"]
)
EVENTS_DEFERRED = Counter(
    "nexttouch_events_online_deferred",
    "Events kept in the inbox whose online contact update was deferred (online store slow or down).",
)
EVENTS_DEFERRED_MADE = Counter(
    "nexttouch_events_online_deferred_made",
    "Events whose deferred online contact update was made later (the rest of nexttouch_events_online_deferred waits).",
)
CHAMPION_SWAPS = Counter("nexttouch_champion_swaps", "Champion models swapped in without a restart.")
LATENCY = Histogram(
    "nexttouch_decide_seconds",
    "Time to answer a decision request (feature read, model, policy, durable log).",
    ["endpoint"],
    buckets=(0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
