"""Fixtures of the origin tests: a real nginx origin on a free loopback port, per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshenc.local.origin import OriginProcess


@pytest.fixture
def origin(tmp_path: Path) -> Iterator[OriginProcess]:
    """A running origin serving ``tmp_path/origin``; its log is ``tmp_path/nginx.log``."""
    process = OriginProcess(tmp_path / "origin", log_path=tmp_path / "nginx.log")
    try:
        yield process.start()
    finally:
        process.close()
