"""``meshenc bench``'s options as the command line reads them (nothing is run)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from meshenc.bench.scale import TrialPlan
from meshenc.cli.bench import _trials
from meshenc.cli.main import cli


def test_scale_trials_read_plain_overload_and_starvation_trials() -> None:
    assert _trials(None, None, "6, 24:4,12~2.5") == [  # type: ignore[arg-type]
        TrialPlan(6),
        TrialPlan(24, 4),
        TrialPlan(12, starve_for=2.5),
    ]


@pytest.mark.parametrize(
    ("options", "says"),
    [
        (["--trials", "6~0"], "0 < S <= 30"),
        (["--trials", "6~31"], "0 < S <= 30"),
        (["--trials", "6:3~4"], "0 < S <= 30"),
        (["--trials", "6~x"], "expected N, N:M or N~S"),
        (["--trials", "6~4", "--relief-at", "47", "--duration", "60"], "at least 10 s"),
    ],
)
def test_scale_trials_that_cannot_run_are_refused(options: list[str], says: str) -> None:
    result = CliRunner().invoke(cli, ["bench", "scale", *options])
    assert result.exit_code == 2, result.output
    assert says in result.output
