"""The flow-distribution algorithm: a pure function from a snapshot to a decision.

(Interface only; the scheduling scheme is filled in below.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Mapping


class TopFlow(StrEnum):
    OFF = "off"
    ON = "on"
    BOOST = "boost"


@dataclass(frozen=True)
class Astrologer:
    """An online astrologer as the matcher sees it at one instant."""

    id: str
    weight: float
    capacity: int
    load: int  # open offers plus sessions
    is_top: bool = False
    flow_enabled: bool = True
    idle_since_ms: int = 0  # when it last received an offer; smaller = idle longer


@dataclass(frozen=True)
class Waiting:
    """A request waiting in a line (not under offer)."""

    request_id: str
    seq: int  # its place in the line: smaller is older
    excluded: frozenset[str] = frozenset()  # astrologers it must not be offered to again


@dataclass(frozen=True)
class Stretch:
    """Flow state: the eligible set since it last changed, and its general counts."""

    members: tuple[tuple[str, float], ...] = ()  # (astrologer id, effective weight), sorted
    counts: Mapping[str, int] = field(default_factory=dict)
    total: int = 0


@dataclass(frozen=True)
class FlowSnapshot:
    astrologers: tuple[Astrologer, ...]  # every astrologer whose status is online
    general: tuple[Waiting, ...]  # head of the general line, oldest first
    direct: Mapping[str, tuple[Waiting, ...]]  # head of each astrologer's own line
    top_flow: TopFlow = TopFlow.ON
    boost: float = 2.0
    stretch: Stretch = Stretch()


@dataclass(frozen=True)
class Offer:
    request_id: str
    astrologer_id: str
    direct: bool


@dataclass(frozen=True)
class Decision:
    offers: tuple[Offer, ...]
    stretch: Stretch


def decide(snapshot: FlowSnapshot) -> Decision:
    raise NotImplementedError
