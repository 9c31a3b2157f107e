"""The DASH manifest of CMAF output: a dynamic MPD whose timeline is the shared one.

Theory of operation: timecodes count frame slots since the Unix epoch, so with
``availabilityStartTime`` on the epoch, one Period from 0 and a ``SegmentTemplate`` of fixed
``duration`` (one GOP, exact in the track's timescale) and ``startNumber`` 0, DASH's
``$Number$`` of the segment that covers an instant *is* the segment number the encoders write:
segment ``n`` spans ``[n, n + 1)`` GOPs since the epoch, its media time (``tfdt``) is its start
in the same timescale and no ``presentationTimeOffset`` is needed. The MPD lists no segments,
so it changes only in ``publishTime`` (the end of the newest segment written, from the shared
timeline): every encoder writes the same MPD after the same segment.

A player finds the live edge from its clock. Segments reach an origin some time after they end
(the GOP is written once it is whole, plus the wait for its audio), so the MPD suggests a
presentation delay of three segments.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

from services.encoder.media.containers import INIT_NAME, track_timescale
from services.encoder.media.gop import EncoderParams

__all__ = ["MPD_NAME", "Representation", "render_ladder_mpd", "render_mpd", "xs_duration"]

MPD_NAME = "manifest.mpd"
#: Segments between the newest one written and what a player should present.
PRESENTATION_DELAY_SEGMENTS = 3
_MPD_NS = "urn:mpeg:dash:schema:mpd:2011"


def xs_duration(seconds: Fraction) -> str:
    """An ``xs:duration`` of ``seconds``, to the millisecond (``PT2.002S``)."""
    millis = round(seconds * 1000)
    return f"PT{millis // 1000}.{millis % 1000:03d}S"


@dataclass(frozen=True, slots=True)
class Representation:
    """One rendition in the MPD: its id, its encoding (size, frame rate, GOP), the RFC 6381
    codecs of its segments' tracks (``avc1.42c01e``, ``mp4a.40.2``) and its bandwidth (bit/s).
    """

    id: str
    params: EncoderParams
    codecs: Sequence[str]
    bandwidth: int


def render_mpd(
    params: EncoderParams,
    *,
    codecs: Sequence[str],
    window: int,
    publish_time: str,
    media_template: str,
) -> str:
    """The MPD of one rendition (``codecs``: its tracks'; bandwidth: its nominal bitrate)."""
    return render_ladder_mpd(
        [Representation("0", params, codecs, params.bitrate_kbps * 1000)],
        window=window,
        publish_time=publish_time,
        media_template=media_template,
    )


def render_ladder_mpd(
    representations: Sequence[Representation],
    *,
    window: int,
    publish_time: str,
    media_template: str,
    init_template: str = INIT_NAME,
) -> str:
    """The MPD of a live CMAF stream on the shared timeline: one AdaptationSet, one
    Representation per rendition (all of one frame rate and GOP, so one SegmentTemplate).

    Args:
        representations: the renditions, the first one's params give the timing.
        window: segments a player may seek back over (``timeShiftBufferDepth``).
        publish_time: when this version was published, ISO 8601 UTC.
        media_template: the media segments' names, with ``$Number...$`` for the number (and
            ``$RepresentationID$`` for a rendition's folder).
        init_template: the init segment's name (``$RepresentationID$`` allowed too).
    """
    params = representations[0].params
    timescale = track_timescale(params)
    ticks_per_frame = params.frame_rate.den * timescale // params.frame_rate.num
    seconds = params.segments.duration(params.time_base)
    rate = params.frame_rate
    mpd = ET.Element(
        "MPD",
        {
            "xmlns": _MPD_NS,
            "profiles": "urn:mpeg:dash:profile:isoff-live:2011",
            "type": "dynamic",
            "availabilityStartTime": "1970-01-01T00:00:00Z",
            "publishTime": publish_time,
            "minimumUpdatePeriod": xs_duration(seconds),
            "minBufferTime": xs_duration(seconds),
            "timeShiftBufferDepth": xs_duration(seconds * window),
            "maxSegmentDuration": xs_duration(seconds),
            "suggestedPresentationDelay": xs_duration(seconds * PRESENTATION_DELAY_SEGMENTS),
        },
    )
    period = ET.SubElement(mpd, "Period", {"id": "0", "start": "PT0S"})
    adaptation = ET.SubElement(
        period,
        "AdaptationSet",
        {
            "id": "0",
            "mimeType": "video/mp4",
            "segmentAlignment": "true",
            "startWithSAP": "1",
        },
    )
    ET.SubElement(
        adaptation,
        "SegmentTemplate",
        {
            "timescale": str(timescale),
            "duration": str(params.gop * ticks_per_frame),
            "startNumber": "0",
            "initialization": init_template,
            "media": media_template,
        },
    )
    for representation in representations:
        ET.SubElement(
            adaptation,
            "Representation",
            {
                "id": representation.id,
                "codecs": ",".join(representation.codecs),
                "bandwidth": str(representation.bandwidth),
                "width": str(representation.params.width),
                "height": str(representation.params.height),
                "frameRate": str(rate),
                "sar": "1:1",
            },
        )
    ET.indent(mpd)
    body = ET.tostring(mpd, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{body}\n'
