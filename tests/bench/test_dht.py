"""``meshenc bench dht`` end to end on small networks: the table, the JSON, refused sizes.

The simulation itself is tested in tests/sim/test_dht.py.
"""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from meshenc.cli.main import cli


def test_the_benchmark_command_prints_a_table_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "dht.json"
    arguments = ["bench", "dht", "--nodes", "60,120", "--lookups", "40", "--records", "10"]
    result = CliRunner().invoke(cli, [*arguments, "--k", "8", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "success %" in result.output and "hops p99" in result.output
    rows = json.loads(out.read_text(encoding="utf-8"))["results"]
    assert [row["nodes"] for row in rows] == [60, 120]
    assert all(row["lookups"] == 40 and 0.0 <= row["success_rate"] <= 1.0 for row in rows)


def test_the_benchmark_command_refuses_bad_sizes() -> None:
    result = CliRunner().invoke(cli, ["bench", "dht", "--nodes", "1000,x"])
    assert result.exit_code == 2
    assert "comma-separated" in result.output
