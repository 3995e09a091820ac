"""Prometheus metrics, named by Prometheus' conventions, with bounded labels.

Each process (gateway or matcher) exposes its own registry; Prometheus scrapes
every process. Labels never carry a user, request or astrologer id.
"""

from __future__ import annotations

import functools

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

REGISTRY = CollectorRegistry(auto_describe=True)

_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
_FAST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)

# Matcher side.
REQUEST_WAIT = Histogram(
    "astroq_request_wait_seconds",
    "Time from a request's creation to its assignment.",
    ["line"],  # general | direct
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
OFFER_RESPONSE = Histogram(
    "astroq_offer_response_seconds",
    "Time from an offer to the astrologer's answer (accept or decline).",
    buckets=(0.1, 0.25, 0.5, 1, 2, 5, 10, 15, 30, 60),
    registry=REGISTRY,
)
DECISION_TIME = Histogram(
    "astroq_matcher_decision_seconds",
    "Time one matcher pass spends reading the snapshot, deciding and committing.",
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
REQUESTS = Counter(
    "astroq_requests_total",
    "Requests by how they ended.",
    ["outcome"],  # assigned | cancelled_user | cancelled_timeout | ... (bounded)
    registry=REGISTRY,
)
OFFERS = Counter(
    "astroq_offers_total",
    "Offers by outcome.",
    ["outcome"],  # accepted | declined | expired | withdrawn | returned
    registry=REGISTRY,
)
WAITING = Gauge(
    "astroq_waiting_requests",
    "Requests waiting in line (not under offer).",
    ["line"],  # general | direct
    registry=REGISTRY,
)
ASTROLOGERS = Gauge(
    "astroq_astrologers",
    "Astrologers by status.",
    ["status"],  # online | break | offline
    registry=REGISTRY,
)
BUSY_SLOTS = Gauge(
    "astroq_busy_slots",
    "Capacity slots held by offers and sessions.",
    registry=REGISTRY,
)
FREE_SLOTS = Gauge(
    "astroq_free_slots",
    "Capacity slots free on online astrologers.",
    registry=REGISTRY,
)
MATCHER_LEADER = Gauge(
    "astroq_matcher_leader",
    "1 while this matcher holds the lease, else 0.",
    registry=REGISTRY,
)
REBUILDS = Counter(
    "astroq_rebuilds_total",
    "Times the matcher rebuilt live state from PostgreSQL.",
    registry=REGISTRY,
)

# Gateway side.
FRAME_TIME = Histogram(
    "astroq_frame_handling_seconds",
    "Time from a client frame's arrival to its answer.",
    ["type"],
    buckets=_FAST_BUCKETS,
    registry=REGISTRY,
)
FRAMES = Counter(
    "astroq_frames_total",
    "Client frames received, by type (unknown types count as 'unknown').",
    ["type"],
    registry=REGISTRY,
)
# A frame type's counter and timer, looked up once: labels() takes a lock and
# builds a key on every call, a few per cent of a busy gateway.
frames_of = functools.cache(FRAMES.labels)
frame_time_of = functools.cache(FRAME_TIME.labels)

ERRORS = Counter(
    "astroq_errors_total",
    "Errors sent to clients, by code.",
    ["code"],
    registry=REGISTRY,
)
SOCKETS = Gauge(
    "astroq_open_sockets",
    "Authenticated sockets open on this gateway, by role.",
    ["role"],
    registry=REGISTRY,
)
RECONNECTS = Counter(
    "astroq_reconnects_total",
    "Sockets that resumed an open request or session.",
    registry=REGISTRY,
)

FRAME_TYPES = frozenset(
    {"auth", "request", "cancel", "end", "status", "accept", "decline", "ping", "unknown"}
)


def frame_label(frame_type: object) -> str:
    """Keeps the `type` label bounded whatever a client sends."""
    return frame_type if isinstance(frame_type, str) and frame_type in FRAME_TYPES else "unknown"


def render() -> bytes:
    return generate_latest(REGISTRY)


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
