"""The sans-IO heart of meshenc.

Everything in this package is pure and deterministic: no sockets, no event loop, no clock
reads. Time is always an argument (seconds on the caller's own clock) and randomness is
injected. The simulator and the services drive exactly these modules; an import-linter
contract in ``pyproject.toml`` keeps it that way.
"""
