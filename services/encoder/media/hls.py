"""Reading HLS playlists the publisher sends, and extending the origin's media playlist.

Several encoders publish the same rung's media playlist to one origin: the leader, and a
deposed leader that has not yet seen its loss; with placed rungs every holder, and holders
come and go. Each encoder's own playlist is its own view: a holder that started writing the
rung a moment ago lists one segment; one a segment behind lists one segment less. Putting
each encoder's playlist as it is would let the origin's version jump forward (dropping
segments a player had not loaded yet) and go back (RFC 8216 forbids a media sequence that
decreases). So the publisher reads the origin's version first and puts :func:`extend`'s
result: the origin's list with this encoder's newer segments appended, as long as the
longer of the two windows, or nothing when this encoder has nothing newer. Segments are
numbered by position (media sequence = segment number, the same on every encoder) and a
segment under a shared name is the same bytes from every encoder, so an entry of either list
is an entry of the other.
"""

from __future__ import annotations

import posixpath
import re
import urllib.parse
from dataclasses import dataclass
from datetime import datetime

__all__ = [
    "MAX_LAG_SECONDS",
    "MAX_PLAYLIST_BYTES",
    "MediaPlaylist",
    "extend",
    "listed_names",
    "without_gaps",
]

#: The largest origin playlist read back; anything longer is not one of ours.
MAX_PLAYLIST_BYTES = 1 << 20
_MAP_URI = re.compile(r'#EXT-X-MAP:.*?URI="([^"]+)"')
_SEQUENCE = "#EXT-X-MEDIA-SEQUENCE:"
_GAP = "#EXT-X-GAP"
#: Tags that apply to the segment after them (the rest of a playlist is its header).
_DATE = "#EXT-X-PROGRAM-DATE-TIME:"
_SEGMENT_TAGS = ("#EXTINF:", _DATE, _GAP, "#EXT-X-BYTERANGE:")
#: How far ahead of this encoder's newest segment the origin's may be, in seconds, and still
#: be this stream's: a live encoder sheds its work a second behind its input, so no holder
#: lags that far; an origin's playlist further ahead was left by another stream (say, an
#: earlier run with another segment length, numbered differently) and must not hold this
#: one up.
MAX_LAG_SECONDS = 30.0


def _lines(data: bytes) -> list[str] | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return [line.strip() for line in text.splitlines()]


def listed_names(name: str, data: bytes) -> list[str]:
    """The relative names an HLS playlist published as ``name`` points at (segments and an
    EXT-X-MAP), resolved against its folder; absolute URLs and paths point elsewhere."""
    folder = posixpath.dirname(name)
    found = []
    for line in _lines(data) or []:
        mapped = _MAP_URI.match(line)
        uri = mapped.group(1) if mapped else ("" if line.startswith("#") else line)
        if not uri or urllib.parse.urlsplit(uri).scheme or uri.startswith("/"):
            continue
        found.append(posixpath.normpath(posixpath.join(folder, uri.split("?", 1)[0])))
    return found


def without_gaps(data: bytes) -> bytes:
    """An HLS playlist without its ``EXT-X-GAP`` tags (each marks the segment URI after it)."""
    lines = data.split(b"\n")
    kept = [line for line in lines if line.rstrip(b"\r") != _GAP.encode()]
    return data if len(kept) == len(lines) else b"\n".join(kept)


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    """A media playlist as this project writes one: a header (every line before the first
    segment's tags, the media sequence among them) and a run of entries, each the tags of
    one segment and its URI, numbered from the media sequence."""

    header: tuple[str, ...]
    first: int
    entries: tuple[tuple[str, ...], ...]

    @property
    def last(self) -> int:
        return self.first + len(self.entries) - 1

    @classmethod
    def parse(cls, data: bytes) -> MediaPlaylist | None:
        """The playlist, or None for anything else: a master playlist, text that is not
        UTF-8, no or a bad media sequence, a tag this project never writes between entries
        (a discontinuity, a part), or no entry."""
        if len(data) > MAX_PLAYLIST_BYTES:
            return None
        lines = _lines(data)
        if not lines or lines[0] != "#EXTM3U":
            return None
        header: list[str] = []
        entries: list[tuple[str, ...]] = []
        block: list[str] = []
        first: int | None = None
        for line in lines:
            if not line:
                continue
            if line.startswith(_SEQUENCE):
                digits = line.removeprefix(_SEQUENCE)
                if first is not None or not (digits.isascii() and digits.isdigit()):
                    return None
                first = int(digits)
                header.append(line)
            elif not line.startswith("#"):
                if not block:
                    return None  # a URI without its EXTINF
                entries.append((*block, line))
                block = []
            elif line.startswith(_SEGMENT_TAGS):
                block.append(line)
            elif entries or block:
                return None  # a tag between entries that this project does not write
            else:
                header.append(line)
        if first is None or block or not entries:
            return None
        return cls(tuple(header), first, tuple(entries))

    def render(self) -> bytes:
        header = [
            f"{_SEQUENCE}{self.first}" if line.startswith(_SEQUENCE) else line
            for line in self.header
        ]
        return ("\n".join([*header, *(line for e in self.entries for line in e)]) + "\n").encode()


def extend(current: bytes | None, mine: MediaPlaylist) -> bytes | None:
    """What to put at the origin, whose media playlist is ``current`` (None: none there),
    for this encoder's media playlist ``mine``: ``current`` with the entries of ``mine``
    after its last appended, trimmed at the top to the longer of the two lists; ``mine``
    itself when the two cannot be joined (``current`` is not a media playlist, or
    ``_joinable`` says no); None when ``mine`` has nothing ``current`` lacks.
    """
    theirs = None if current is None else MediaPlaylist.parse(current)
    if theirs is None or not _joinable(theirs, mine):
        return mine.render()
    if mine.last <= theirs.last:
        return None
    # Entries both list are the same segment under the same name: the origin's stay.
    appended = mine.entries[theirs.last + 1 - mine.first :]
    entries = (*theirs.entries, *appended)[-max(len(mine.entries), len(theirs.entries)) :]
    return MediaPlaylist(mine.header, mine.last + 1 - len(entries), entries).render()


def _joinable(theirs: MediaPlaylist, mine: MediaPlaylist) -> bool:
    """Whether ``mine`` can extend ``theirs``: the same header but for the media sequence
    (segment duration, init), no hole between them (a segment nobody published, which no
    playlist of the origin can list), and ``theirs`` ending at most ``MAX_LAG_SECONDS``
    after ``mine``."""
    ahead = _seconds_ahead(theirs, mine)
    return (
        mine.first <= theirs.last + 1
        and (ahead is None or ahead <= MAX_LAG_SECONDS)
        and _strip_sequence(mine.header) == _strip_sequence(theirs.header)
    )


def _seconds_ahead(theirs: MediaPlaylist, mine: MediaPlaylist) -> float | None:
    """How far the last segment of ``theirs`` starts after that of ``mine``, from their
    EXT-X-PROGRAM-DATE-TIME; None when either does not say."""
    stamps = [_date(playlist.entries[-1]) for playlist in (theirs, mine)]
    if stamps[0] is None or stamps[1] is None:
        return None
    return (stamps[0] - stamps[1]).total_seconds()


def _date(entry: tuple[str, ...]) -> datetime | None:
    for line in entry:
        if line.startswith(_DATE):
            try:
                stamp = datetime.fromisoformat(line.removeprefix(_DATE))
            except ValueError:
                return None
            return stamp if stamp.tzinfo is not None else None
    return None


def _strip_sequence(header: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(line for line in header if not line.startswith(_SEQUENCE))
