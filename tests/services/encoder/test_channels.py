"""Several channels in one encoder process: the settings each channel runs with, and the
flags and values that are refused before anything starts."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from meshenc.cli.encoder import encoder as encoder_command
from meshenc.cli.inspect import status as status_command
from services.common.etcd import EtcdSettings
from services.encoder.settings import MAX_CHANNELS, EncoderSettings, parse_channel

URL_A, URL_B = "udp://127.0.0.1:5000", "udp://127.0.0.1:5002"


def test_each_channel_gets_its_source_folder_origin_path_and_election_keys(
    tmp_path: Path,
) -> None:
    settings = EncoderSettings(
        id="e",
        out=tmp_path,
        channels={"0": URL_A, "news": URL_B},
        publish=("http://origin:8080/live/",),
        serve_output="127.0.0.1:0",
        etcd=EtcdSettings(endpoints=("http://127.0.0.1:2379",), prefix="/mesh"),
    )
    first, second = settings.channel_settings()
    assert (first.channel, first.source, first.out) == ("0", URL_A, tmp_path / "0")
    assert (second.channel, second.source, second.out) == ("news", URL_B, tmp_path / "news")
    assert second.publish == ("http://origin:8080/live/news",)
    assert first.serve_output is None and second.serve_output is None  # the process serves OUT
    # Channel 0 elects where a one-channel encoder does; any other under its own keys.
    assert first.leadership_etcd is not None and first.leadership_etcd.prefix == "/mesh"
    assert second.leadership_etcd is not None
    assert second.leadership_etcd.prefix == "/mesh/channels/news"
    alone = EncoderSettings(id="e", out=tmp_path, source=URL_A)
    assert alone.channel_settings() == (alone,)
    assert alone.channel == "0"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("news", "NAME=SOURCE"),
        ("news=", "NAME=SOURCE"),
        ("..=udp://x:1", "'.' or '..'"),
        ("a b=udp://x:1", "characters of"),
        (f"{'x' * 129}=udp://x:1", "characters of"),
    ],
)
def test_a_bad_channel_is_refused_naming_the_rule(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_channel(text)


def test_channels_replace_source_and_are_bounded(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="leave out --source"):
        EncoderSettings(id="e", out=tmp_path, source=URL_A, channels={"a": URL_B})
    with pytest.raises(ValueError, match="at most 16"):
        EncoderSettings(
            id="e", out=tmp_path, channels={f"c{i}": URL_A for i in range(MAX_CHANNELS + 1)}
        )
    with pytest.raises(ValueError, match=r"'\.' or '\.\.'"):
        EncoderSettings(id="e", out=tmp_path, channels={"..": URL_A})


def test_the_command_refuses_bad_channels_before_writing_anything(tmp_path: Path) -> None:
    run = CliRunner().invoke
    base = ["--id", "e", "--out", str(tmp_path), "--insecure"]
    twice = run(encoder_command, [*base, "--channel", f"a={URL_A}", "--channel", f"a={URL_B}"])
    assert twice.exit_code == 2 and "'a' is given twice" in twice.output
    both = run(encoder_command, [*base, "--channel", f"a={URL_A}", "--source", URL_B])
    assert both.exit_code == 2 and "leave out --source" in both.output
    dots = run(encoder_command, base, env={"MESHENC_CHANNELS": f"..={URL_A}"})
    assert dots.exit_code == 2 and "'.' or '..'" in dots.output
    assert not any(tmp_path.iterdir())


def test_inspect_refuses_a_bad_channel_before_asking() -> None:
    bad = CliRunner().invoke(
        status_command, ["--encoders", "127.0.0.1:1", "--channel", "..", "--insecure"]
    )
    assert bad.exit_code == 2 and "--channel" in bad.output
