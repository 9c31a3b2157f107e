"""Extending the origin's media playlist with an encoder's (``services.encoder.media.hls``):
the playlists are the SegmentWriter's own, written from real frames, or built like them."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.encoder.media import (
    SegmentFormat,
    SegmentWriter,
    segment_name,
)
from services.encoder.media.hls import MediaPlaylist, extend, listed_names, without_gaps
from services.encoder.media.segments import utc_instant

from .frames import pattern_frames


def playlist(segments: range, *, target: int = 2, gaps: frozenset[int] = frozenset()) -> bytes:
    """A media playlist as the SegmentWriter writes one (MPEG-TS, 2 s segments)."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{target}"]
    lines.append(f"#EXT-X-MEDIA-SEQUENCE:{segments.start}")
    for n in segments:
        lines += [f"#EXT-X-PROGRAM-DATE-TIME:{utc_instant(Fraction(2 * n))}", "#EXTINF:2.000,"]
        lines += ["#EXT-X-GAP"] if n in gaps else []
        lines.append(segment_name(n))
    return ("\n".join(lines) + "\n").encode()


def parsed(data: bytes) -> MediaPlaylist:
    playlist = MediaPlaylist.parse(data)
    assert playlist is not None
    return playlist


def numbers(data: bytes | None) -> range:
    assert data is not None
    playlist = parsed(data)
    return range(playlist.first, playlist.last + 1)


def test_the_segment_writers_own_playlist_round_trips(tmp_path: Path) -> None:
    """Both formats: a playlist the writer wrote from real frames parses, lists its segments,
    and renders back to the same bytes."""
    params, frames = pattern_frames(gop=3, segments=4)
    for fmt_ in SegmentFormat:
        writer = SegmentWriter(tmp_path / fmt_.name, params, fmt=fmt_)
        for frame in frames:
            writer.add(frame)
        writer.finish()
        data = writer.playlist_path.read_bytes()
        playlist = parsed(data)
        assert range(playlist.first, playlist.last + 1) == range(200, 204)
        assert playlist.render() == data
        assert listed_names("a/index.m3u8", data)[-1] == f"a/{segment_name(203, fmt_)}"


def test_a_holder_that_just_began_extends_the_origins_window() -> None:
    """A holder whose playlist lists one segment (it began writing the rung a moment ago)
    appends it to the origin's ten: the window moves by one, not to that segment alone."""
    merged = extend(playlist(range(914, 924)), parsed(playlist(range(924, 925))))
    assert numbers(merged) == range(915, 925)
    assert merged == playlist(range(915, 925))


def test_a_lagging_holder_puts_nothing() -> None:
    """A holder a segment behind has nothing the origin lacks: nothing goes out, so the
    origin's media sequence never goes back."""
    assert extend(playlist(range(914, 924)), parsed(playlist(range(913, 923)))) is None
    assert extend(playlist(range(914, 924)), parsed(playlist(range(914, 924)))) is None


def test_the_origins_entries_stay_and_the_window_is_the_longer_one() -> None:
    """Entries both list stay the origin's; the origin's shorter list grows only at its end
    (prepending this encoder's older entries would take its media sequence back)."""
    assert extend(playlist(range(920, 924)), parsed(playlist(range(914, 925)))) == playlist(
        range(920, 925)
    )
    assert extend(playlist(range(920, 930)), parsed(playlist(range(925, 931)))) == playlist(
        range(921, 931)
    )


@pytest.mark.parametrize(
    ("current", "why"),
    [
        (None, "no playlist on the origin"),
        (playlist(range(900, 910)), "a hole: 910 and 911 were never listed"),
        (playlist(range(900, 913), target=4), "another segment duration"),
        (playlist(range(905, 935)), "40 s ahead: not this stream's"),
        (b"#EXTM3U\n#EXT-X-STREAM-INF:BANDWIDTH=1\nv/index.m3u8\n", "a master playlist"),
        (b"\xff\xfe junk", "not UTF-8"),
        (b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:-4\n#EXTINF:2,\na.ts\n", "a bad media sequence"),
        (b"#EXTM3U\n#EXT-X-MEDIA-SEQUENCE:911\n#EXTINF:2,\n", "an entry without its URI"),
        (
            playlist(range(905, 911)) + b"#EXT-X-DISCONTINUITY\n#EXTINF:2,\nb.ts\n",
            "a tag this project never writes",
        ),
        (b"#EXTM3U\n" + b"#" * (1 << 20), "over a mebibyte"),
    ],
)
def test_what_cannot_be_joined_goes_out_as_it_is(current: bytes | None, why: str) -> None:
    ours = playlist(range(912, 915))
    assert extend(current, parsed(ours)) == ours, why


def test_gap_tags_are_removed_and_only_they() -> None:
    gapped = playlist(range(10, 14), gaps=frozenset({11, 12}))
    assert without_gaps(gapped) == playlist(range(10, 14))
    assert without_gaps(playlist(range(10, 14))) == playlist(range(10, 14))
    assert without_gaps(gapped.replace(b"\n", b"\r\n")) == playlist(range(10, 14)).replace(
        b"\n", b"\r\n"
    )


@given(
    st.lists(
        st.tuples(st.integers(1, 10), st.integers(-2, 1)),
        min_size=1,
        max_size=60,
    )
)
def test_the_origins_playlist_only_moves_forward_whoever_publishes(
    publishes: list[tuple[int, int]],
) -> None:
    """Holders with windows of 1 to 10 segments, each up to two segments behind the newest
    or one ahead, publish in any order: the origin's list is always a run of consecutive
    numbers whose first and last never decrease, and it holds every newest segment put."""
    origin: bytes | None = None
    newest = 100
    for window, lag in publishes:
        newest = max(newest, newest + lag)
        last = newest + min(lag, 0)
        ours = playlist(range(max(0, last - window + 1), last + 1))
        before = None if origin is None else numbers(origin)
        put = extend(origin, parsed(ours))
        if put is None:
            assert before is not None and before.stop - 1 >= last
            continue
        after = numbers(put)
        if before is not None:
            assert after.start >= before.start and after.stop >= before.stop
            assert after.stop - 1 == max(last, before.stop - 1)
        origin = put
