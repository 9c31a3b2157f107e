"""The manager's autoscaling settings: flags and environment variables in, the core's policy
out, bad values refused by name before anything starts."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from meshenc.cli.manager import manager
from meshenc.core.planner.autoscale import AutoscaleConfig
from services.manager.settings import ActuatorKind, ManagerSettings, parse_work_units

KUBERNETES = ["--insecure", "--actuator", "kubernetes", "--encoder-statefulset", "enc"]


def test_autoscaling_flags_become_the_cores_policy() -> None:
    """Both bounds turn autoscaling on, with the marks and timers given; without bounds the
    core has no policy and never scales."""
    settings = ManagerSettings(
        actuator=ActuatorKind.KUBERNETES,
        encoder_statefulset="enc",
        autoscale_min=2,
        autoscale_max=9,
        autoscale_high_water=0.8,
        autoscale_low_water=0.2,
        autoscale_cooldown=30.0,
    )
    policy = settings.core_config().autoscale
    assert policy == AutoscaleConfig(
        min_replicas=2, max_replicas=9, high_water=0.8, low_water=0.2, cooldown=30.0
    )
    off = ManagerSettings(actuator=ActuatorKind.KUBERNETES, encoder_statefulset="enc")
    assert off.core_config().autoscale is None


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--autoscale-min", "2"], {}, "--autoscale-min and --autoscale-max go together"),
        (
            ["--autoscale-min", "5", "--autoscale-max", "3"],
            {},
            "--autoscale-min must not exceed --autoscale-max",
        ),
        (
            ["--autoscale-min", "1", "--autoscale-max", "3"],
            {"MESHENC_AUTOSCALE_LOW_WATER": "0.8", "MESHENC_AUTOSCALE_HIGH_WATER": "0.7"},
            "--autoscale-low-water must be below --autoscale-high-water",
        ),
        (["--autoscale-high-water", "1.5"], {}, "autoscale_high_water"),
        (["--autoscale-cooldown", "nan"], {}, "autoscale_cooldown"),
        (["--autoscale-cooldown", "-1"], {}, "autoscale_cooldown"),
        (
            ["--autoscale-drain-grace", "30", "--autoscale-drain-timeout", "20"],
            {},
            "--autoscale-drain-timeout must be longer than --autoscale-drain-grace",
        ),
    ],
)
def test_bad_autoscaling_settings_are_refused_by_name(
    args: list[str], env: dict[str, str], message: str
) -> None:
    result = CliRunner().invoke(manager, [*KUBERNETES, *args], env=env)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_work_units_and_redundancy_become_the_placement_and_bad_ones_are_refused() -> None:
    """Each unit is two identifiers (the documents carry it), none twice; the redundancy goes
    to the core's placement."""
    settings = ManagerSettings(
        actuator=ActuatorKind.KUBERNETES,
        encoder_statefulset="enc",
        work_units=parse_work_units("0/640x360, 0/320x180"),
        redundancy=3,
    )
    assert [u.unit_id for u in settings.work_units] == ["0/640x360", "0/320x180"]
    assert settings.core_config().planner.placement.redundancy == 3
    for bad, message in (
        ("0/a/b", "must be CHANNEL/RENDITION"),
        ("0", "must be CHANNEL/RENDITION"),
        ("0/a b", "must be CHANNEL/RENDITION"),
        ("0/a,0/a", "given twice"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_work_units(bad)
    refused = CliRunner().invoke(manager, [*KUBERNETES, "--redundancy", "0"])
    assert refused.exit_code == 2 and "redundancy" in refused.output
