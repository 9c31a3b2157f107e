"""The error every wire check raises.

It lives apart from the checks (``validation``) because those can be compiled (mypyc,
``scripts/compile-hot-path.sh``), and a compiled class cannot be subclassed by interpreted
code such as ``adjacency.InvalidDocument``.
"""

from __future__ import annotations


class InvalidMessage(ValueError):  # noqa: N818 -- the name the services and tests use
    """A received message breaks a wire rule.

    ``field`` is the dotted path of the offending field within the validated message
    (``"body"``, ``"esp.frame_hash"``, ``"votes[1].voter_id"``); ``reason`` states the rule
    and the value received.
    """

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason

    def __reduce__(self) -> tuple[type[InvalidMessage], tuple[str, str]]:
        return (type(self), (self.field, self.reason))
