"""A wall-clock deadline: one point in time that a whole network phase must end by.

Pure: it only reads a monotonic clock.  :mod:`imgsign._internal.netlimits` enforces it on
every socket a phase opens (connect, headers, body), whatever the peer does.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Deadline:
    """``seconds`` from now (on ``clock``, :func:`time.monotonic` by default); ``what`` names the
    setting it comes from in messages (e.g. ``"[boot] adopt_timeout"``)."""

    __slots__ = ("_clock", "at", "seconds", "what")

    def __init__(self, seconds: float, what: str, *, clock: Callable[[], float] = time.monotonic) -> None:
        if not seconds > 0:
            raise ValueError(f"a deadline needs a positive number of seconds, not {seconds!r}")
        self.seconds = float(seconds)
        self.what = what
        self._clock = clock
        self.at = clock() + self.seconds

    def remaining(self) -> float:
        """Seconds left (0.0 once passed)."""
        return max(0.0, self.at - self._clock())

    @property
    def expired(self) -> bool:
        return self._clock() >= self.at

    def sooner(self, other: Deadline | None) -> Deadline:
        """Whichever of ``self`` and ``other`` comes first."""
        return self if other is None or self.at <= other.at else other

    def describe(self) -> str:
        """``"within N s (what)"``, for a message about a phase that did not end in time."""
        return f"within {self.seconds:g} s ({self.what})"

    def __repr__(self) -> str:
        return f"<Deadline {self.describe()}, {self.remaining():.3f} s left>"
