"""Fixtures shared across the test folders."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from meshenc.local.etcd import EtcdProcess


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdProcess]:
    """A real etcd on free local ports, for one test; its log is in the test's folder."""
    process = EtcdProcess(log_path=tmp_path / "etcd.log")
    try:
        yield process.start()
    finally:
        process.close()
