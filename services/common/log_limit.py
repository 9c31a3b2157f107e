"""Log lines about bad input, at most one per kind per interval.

A hostile or broken peer can send a malformed message as fast as the network allows; a log line
for each would drown the log and cost more than refusing it. ``LimitedLog`` writes the first
line of a kind at once and then at most one per ``interval`` seconds, saying how many it held
back in between, so the log still shows that it goes on and how much.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["LimitedLog"]


class LimitedLog:
    """At most one line per ``key`` every ``interval`` seconds on ``logger``."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 1024,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        #: key -> (when its last line was written, lines held back since)
        self._seen: dict[str, tuple[float, int]] = {}

    def warning(self, key: str, message: str, *args: object) -> bool:
        """Log ``message % args`` at WARNING unless a line of ``key`` went out less than
        ``interval`` ago; returns whether it was written."""
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self._interval:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        held = last[1] if last is not None else 0
        if held:
            message += f" (and {held} more like it in the last %.0f s)"
            args = (*args, now - last[0]) if last is not None else args
        if key not in self._seen and len(self._seen) >= self._max_keys:
            self._seen.pop(next(iter(self._seen)))  # the oldest kind: memory stays bounded
        self._seen[key] = (now, 0)
        self._logger.warning(message, *args)
        return True
