"""The Sink protocol: publish one slot's folded series of one tenant, then wait until delivered."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from worker.model.series import Attributes, Series

__all__ = ["Delivered", "Delivery", "Sink"]


@dataclass(slots=True)
class Delivered:
    """What one publication delivered: records and their bytes, and records refused as too large."""

    records: int = 0
    bytes: int = 0
    #: Records no retry can deliver (over the output's size limit): counted and skipped, so they
    #: never hold back the series published after them.
    too_large: int = 0


class Delivery(Protocol):
    """One publication handed to a sink, not yet confirmed."""

    async def wait(self) -> Delivered:
        """Return once every record is delivered or refused as too large; raise on any other failure."""
        ...


class Sink(Protocol):
    """An output. Each sink owns its encoding and says what "delivered" means for it.

    Kafka: acknowledged by the broker per the producer's ``acks`` (``all``: by every in-sync replica).
    """

    async def publish(
        self, tenant: str, resources: Mapping[str, Attributes], series: Sequence[Series], now_ns: int
    ) -> Delivery:
        """Encode ``series`` (one slot, one tenant) stamped ``now_ns`` and hand them to the output.

        Returns without waiting for delivery, so the next slot can be folded meanwhile; the
        series may be adjusted in place to fit the sink's format.
        """
        ...
