"""Are the encoders' outputs locked? The verdict from the segment files alone.

Theory of operation
-------------------
Every encoder writes one segment file per GOP (MPEG-TS ``.ts``, or CMAF ``.m4s`` beside its
``init.mp4``), named by segment number (``timecode div GOP``, see
:func:`services.encoder.media.segments.segment_name`), and a segment file is a pure function
of its frames' timecodes and the encoding parameters. Encoders that agree on the timecode of
every source picture therefore write byte-identical files under the same names, and encoders
that disagree on even one picture write different bytes. Comparing SHA-256 digests of the files
is the whole check; nothing the encoders *say* about themselves enters it.

:func:`scan_output` reads one folder (IO); :func:`compare` is a pure function of the digests
(and of a frame counter it is handed); :func:`verify` does both.

An ABR ladder's output is judged by one rung (:func:`rendition_folder`). Where the manager
placed the rungs on different encoders (``meshenc up --ladder``), or the encoders took in
several channels (``meshenc up --channels``), :func:`verify_units` judges every work unit (a
rung, a channel, or a channel's rung) among the encoders that wrote it: one comparison per
unit.

Definitions (``docs/report.md`` explains them with examples):

copy
    One encoder's file of one segment.
run
    A maximal sequence of consecutive segment numbers in one folder. Before its first and
    after its last segment an encoder was not running; a missing number *between* two runs is
    a **gap** (a lost segment, or a restart).
lock-in
    The first ``lock_in`` segments of every run are exempt: the encoder was still joining the
    timeline. A copy in that window is a *lock-in copy*; every other copy is *judged*.
reference
    The digest of a segment held by the most judged copies; a tie is broken by counting the
    lock-in copies too; a segment still tied has no reference (a *split*).
judged segment
    A segment with at least two copies, at least one of them judged.
agreed segment
    A judged segment with a reference that every judged copy holds.
misaligned frames
    A frame is misaligned when encoders disagree on the timecode of the same source picture;
    the files show that as a copy whose bytes differ from the reference. Every judged copy that
    differs contributes the number of frames of the segment (the access units in the reference
    copy; in a split, in a copy of a largest group). In a split, all judged copies but those of
    one largest group count: the fewest encoders that would have to change for all to agree.
    Differing lock-in copies are counted apart (``lock_in_misaligned_frames``). A differing
    segment of which no copy demuxes counts no frames and is listed in ``uncounted``.
locked
    At least one judged segment, and every judged segment agreed. Gaps are reported but do not
    by themselves unlock the mesh (a restarted encoder leaves one by design).
locked fraction
    Agreed segments over judged segments.
lock-in taken
    Per run: the segments before the copy from which every later copy of the run holds its
    segment's reference (``None`` when the run's last copy does not). ``locked_after`` is the
    largest of these over all runs.

Invariants: :func:`compare` depends only on the digests, the names and the frame counts, not on
the order of its inputs; ``agreed <= judged``; ``misaligned_frames == 0`` whenever ``locked``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av

from services.encoder.media.ladder import MASTER_NAME
from services.encoder.media.segments import (
    ASIDE_PREFIX,
    INIT_NAME,
    PLAYLIST_NAME,
    SegmentFormat,
    aside_name,
    segment_format,
    segment_name,
    segment_number,
)

#: The folder of a local run (``meshenc up``) where the origin keeps what it received: it
#: holds what the origin served, not an encoder's output, so finding outputs passes it by.
ORIGIN_DIR = "origin"

__all__ = [
    "DEFAULT_LOCK_IN",
    "ORIGIN_DIR",
    "Copy",
    "EncoderOutput",
    "FrameCounter",
    "MediaPlaylist",
    "Run",
    "SegmentCheck",
    "Verification",
    "compare",
    "count_frames",
    "find_outputs",
    "output_units",
    "parse_playlist",
    "rendition_folder",
    "rung_pixels",
    "scan_output",
    "unit_folders",
    "verify",
    "verify_units",
]

DEFAULT_LOCK_IN = 3
"""Segments of every run allowed to differ while an encoder joins the timeline (the
integration test's window: lock-in ends within two segments, now and then in the third)."""


FrameCounter = Callable[[Path], int]


@dataclass(frozen=True, slots=True)
class EncoderOutput:
    """One encoder's output folder: segment number to SHA-256 (hex) of the file.

    Attributes:
        name: the encoder's name (the folder's name); unique within one comparison.
        folder: where the files are.
        digests: segment number to the hex SHA-256 of its file, whether under the shared name
            or aside.
        playlist_problems: what is wrong with the folder's playlist, if anything.
        format: the segments' format (their file names' suffix).
        aside: the segments written aside (``aside_name``): the encoder could not vouch for
            them, so its server never serves them; they count here as what it produced.
    """

    name: str
    folder: Path
    digests: Mapping[int, str]
    playlist_problems: tuple[str, ...] = ()
    format: SegmentFormat = SegmentFormat.TS
    aside: frozenset[int] = frozenset()

    def path(self, segment: int) -> Path:
        name = aside_name if segment in self.aside else segment_name
        return self.folder / name(segment, self.format)

    @property
    def served(self) -> Mapping[int, str]:
        """The digests of the segments under their shared names: what a reader of this
        encoder's output (its server, the origin it published to) could get."""
        if not self.aside:
            return self.digests
        return {n: d for n, d in self.digests.items() if n not in self.aside}

    @property
    def runs(self) -> tuple[tuple[int, int], ...]:
        """Maximal runs of consecutive segment numbers, as (first, last), in order."""
        runs: list[tuple[int, int]] = []
        for number in sorted(self.digests):
            if runs and number == runs[-1][1] + 1:
                runs[-1] = (runs[-1][0], number)
            else:
                runs.append((number, number))
        return tuple(runs)

    @property
    def gaps(self) -> tuple[tuple[int, int], ...]:
        """Missing segment numbers between runs, as (first missing, last missing)."""
        runs = self.runs
        return tuple((a[1] + 1, b[0] - 1) for a, b in itertools.pairwise(runs))


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


@dataclass(frozen=True, slots=True)
class MediaPlaylist:
    """What an HLS media playlist says, as far as the checks of the files need it."""

    #: EXT-X-MEDIA-SEQUENCE (None: the tag is absent).
    media_sequence: int | None
    #: The listed URIs (segment names), in order.
    uris: tuple[str, ...]
    #: EXT-X-DISCONTINUITY tags.
    discontinuities: int = 0
    #: The value of EXT-X-DISCONTINUITY-SEQUENCE as written (None: the tag is absent).
    discontinuity_sequence: str | None = None


def parse_playlist(text: str) -> MediaPlaylist:
    """The one reader of media playlists (an encoder's folder, the origin's recording).

    Raises:
        ValueError: the media sequence is not a whole number.
    """
    sequence: int | None = None
    discontinuity_sequence: str | None = None
    discontinuities = 0
    uris: list[str] = []
    for line in (raw.strip() for raw in text.splitlines()):
        if line == "#EXT-X-DISCONTINUITY":
            discontinuities += 1
        elif line.startswith("#EXT-X-DISCONTINUITY-SEQUENCE:"):
            discontinuity_sequence = line.partition(":")[2].strip()
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            value = line.partition(":")[2].strip()
            if not value.isdecimal():
                raise ValueError(f"bad media sequence {line!r}")
            sequence = int(value)
        elif line and not line.startswith("#"):
            uris.append(line)
    return MediaPlaylist(sequence, tuple(uris), discontinuities, discontinuity_sequence)


def _playlist_problems(
    folder: Path, segments: Iterable[int], fmt: SegmentFormat
) -> tuple[str, ...]:
    """Does the live playlist number its segments as the files do?

    HLS numbers a listed segment by position (media sequence + index), so a playlist is
    consistent when the i-th listed file is ``segment_name(media_sequence + i)`` and was
    written (a segment written aside is listed all the same, see ``SegmentWriter``).
    """
    path = folder / PLAYLIST_NAME
    if not path.is_file():
        return ()
    try:
        playlist = parse_playlist(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        return (f"{PLAYLIST_NAME} unreadable: {exc}",)
    except ValueError as exc:
        return (f"{PLAYLIST_NAME}: {exc}",)
    sequence, listed = playlist.media_sequence, playlist.uris
    if sequence is None:
        return (f"{PLAYLIST_NAME} has no media sequence",) if listed else ()
    present = {segment_name(s, fmt) for s in segments}
    problems = []
    for index, name in enumerate(listed):
        expected = segment_name(sequence + index, fmt)
        if name != expected:
            problems.append(f"{PLAYLIST_NAME} lists {name} where {expected} belongs")
        elif name not in present:
            problems.append(f"{PLAYLIST_NAME} lists {name}, which is not in the folder")
    return tuple(problems)


def rendition_folder(folder: Path) -> Path:
    """The folder whose segments stand for an output: ``folder`` itself, or for an ABR ladder's
    output (a ``master.m3u8`` above one folder per rung) the rung its master lists first;
    without a master (a placed ladder's rungs as the origin received them: no encoder
    publishes a master there), the largest rung folder holding segments, if ``folder`` itself
    holds none."""
    master = folder / MASTER_NAME
    if master.is_file():
        for line in master.read_text(errors="replace").splitlines():
            uri = line.strip()
            if uri and not uri.startswith("#"):
                rung = folder / Path(uri).parent
                if rung != folder and rung.parent == folder and rung.is_dir():
                    return rung
                break
        return folder
    if folder.is_dir() and not _has_segment_files(folder):
        rungs = [
            (int(width) * int(height), rung)
            for rung in folder.iterdir()
            if rung.is_dir()
            for width, x, height in [rung.name.partition("x")]
            if x and width.isdigit() and height.isdigit() and _has_segment_files(rung)
        ]
        if rungs:
            return max(rungs)[1]
    return folder


def _has_segment_files(folder: Path) -> bool:
    return any(
        segment_number(p.name.removeprefix(ASIDE_PREFIX)) is not None
        for p in folder.iterdir()
        if p.is_file()
    )


def scan_output(folder: Path, name: str | None = None) -> EncoderOutput:
    """Digest every segment file of one encoder's folder and check its playlist.

    Files that are not segments (temp files, logs, the playlist, CMAF's init) are ignored. A
    folder holding segments of both formats is judged by the format it holds more of. An ABR
    ladder's output is judged by its first rung (:func:`rendition_folder`), named after the
    encoder's folder.

    Raises:
        FileNotFoundError / NotADirectoryError: ``folder`` is not a readable folder.
    """
    name = name if name is not None else Path(folder).name
    folder = rendition_folder(Path(folder))
    found: dict[SegmentFormat, dict[int, Path]] = {fmt: {} for fmt in SegmentFormat}
    aside: dict[SegmentFormat, dict[int, Path]] = {fmt: {} for fmt in SegmentFormat}
    for entry in folder.iterdir():
        shared = entry.name.removeprefix(ASIDE_PREFIX)
        fmt = segment_format(shared)
        number = segment_number(shared)
        if fmt is not None and number is not None and entry.is_file():
            (found if shared == entry.name else aside)[fmt][number] = entry
    fmt = max(SegmentFormat, key=lambda f: len(found[f]) + len(aside[f]))
    paths = {**aside[fmt], **found[fmt]}  # a shared copy, if both are there
    digests = {number: _digest(path) for number, path in sorted(paths.items())}
    return EncoderOutput(
        name=name,
        folder=folder,
        digests=digests,
        playlist_problems=_playlist_problems(folder, paths, fmt),
        format=fmt,
        aside=frozenset(aside[fmt]) - frozenset(found[fmt]),
    )


def _holds_segments(folder: Path) -> bool:
    """Whether the folder (for a ladder: its first rung) holds segment files."""
    return _has_segment_files(rendition_folder(folder))


def find_outputs(paths: Iterable[Path]) -> list[Path]:
    """The encoder folders named by ``paths``: a folder holding segment files (or an ABR
    ladder's, see :func:`rendition_folder`) is one; a folder holding none stands for its
    subfolders that do (a run's output root), except the origin's recording (``origin/``),
    which holds what encoders published, not an encoder's output.

    Raises:
        NotADirectoryError: a path is not a folder.
    """
    found: list[Path] = []
    for path in (Path(p) for p in paths):
        if not path.is_dir():
            raise NotADirectoryError(f"{path} is not a folder")
        if _holds_segments(path):
            found.append(path)
        else:
            found.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.is_dir() and p.name != ORIGIN_DIR and _holds_segments(p)
                )
            )
    return found


def segment_source(path: Path) -> Path | io.BytesIO:
    """What a demuxer reads for one segment file (under its shared name or written aside): the
    file itself (MPEG-TS), or a CMAF media segment behind its folder's init segment.

    Raises:
        OSError: a file cannot be read.
    """
    if segment_format(path.name.removeprefix(ASIDE_PREFIX)) is SegmentFormat.CMAF:
        return io.BytesIO((path.parent / INIT_NAME).read_bytes() + path.read_bytes())
    return path


def picture_size(path: Path) -> tuple[int, int] | None:
    """The size of the first picture of one segment file as a decoder sees it (from the
    stream's own SPS); None if it cannot be decoded."""
    try:
        with av.open(segment_source(path), "r") as container:
            if not container.streams.video:
                return None
            for frame in container.decode(container.streams.video[0]):
                return (frame.width, frame.height)
    except (av.FFmpegError, OSError):
        return None
    return None


def count_frames(path: Path) -> int:
    """Access units (frames) in one segment file, by demuxing it (a CMAF segment behind the
    folder's init segment); 0 if it cannot be read."""
    try:
        with av.open(segment_source(path), "r") as container:
            if not container.streams.video:
                return 0
            stream = container.streams.video[0]
            return sum(1 for packet in container.demux(stream) if packet.size > 0)
    except (av.FFmpegError, OSError):
        return 0


@dataclass(frozen=True, slots=True)
class Copy:
    """One encoder's file of one segment, as judged."""

    encoder: str
    digest: str
    lock_in: bool
    matches: bool
    """Holds the segment's reference digest."""


@dataclass(frozen=True, slots=True)
class SegmentCheck:
    """The verdict on one segment number.

    Attributes:
        segment: the segment number.
        copies: one per encoder that wrote it, by encoder name.
        gaps: encoders that were running (a run before and after) but have no copy.
        reference: the reference digest; None for a split.
        frames: frames counted in the reference copy (or, if it does not demux, in the first
            other copy that does); None when nothing needed counting; 0 when no copy demuxed.
        misaligned_frames: frames of judged copies that differ (see the module docstring).
        lock_in_misaligned_frames: the same for lock-in copies.
    """

    segment: int
    copies: tuple[Copy, ...]
    gaps: tuple[str, ...]
    reference: str | None
    frames: int | None
    misaligned_frames: int
    lock_in_misaligned_frames: int

    @property
    def judged(self) -> bool:
        return len(self.copies) >= 2 and any(not c.lock_in for c in self.copies)

    @property
    def agreed(self) -> bool:
        return (
            self.judged
            and self.reference is not None
            and all(c.matches for c in self.copies if not c.lock_in)
        )

    @property
    def identical(self) -> bool:
        """Every copy, lock-in ones included, holds the same bytes (and there are two)."""
        return len(self.copies) >= 2 and len({c.digest for c in self.copies}) == 1


@dataclass(frozen=True, slots=True)
class Run:
    """One run of one encoder and how long it took to lock in."""

    encoder: str
    first: int
    last: int
    lock_in_taken: int | None

    @property
    def segments(self) -> int:
        return self.last - self.first + 1


@dataclass(frozen=True, slots=True)
class Verification:
    """The comparison of several encoders' outputs."""

    encoders: tuple[EncoderOutput, ...]
    segments: tuple[SegmentCheck, ...]
    runs: tuple[Run, ...]
    lock_in: int
    _by_number: Mapping[int, SegmentCheck] = field(repr=False, compare=False)

    def segment(self, number: int) -> SegmentCheck | None:
        return self._by_number.get(number)

    @property
    def judged(self) -> int:
        return sum(1 for s in self.segments if s.judged)

    @property
    def agreed(self) -> int:
        return sum(1 for s in self.segments if s.agreed)

    @property
    def locked(self) -> bool:
        return self.judged > 0 and self.agreed == self.judged

    @property
    def locked_fraction(self) -> float | None:
        judged = self.judged
        return self.agreed / judged if judged else None

    @property
    def misaligned_frames(self) -> int:
        return sum(s.misaligned_frames for s in self.segments)

    @property
    def lock_in_misaligned_frames(self) -> int:
        return sum(s.lock_in_misaligned_frames for s in self.segments)

    @property
    def uncounted(self) -> tuple[int, ...]:
        """Segments with differing copies none of which could be demuxed: their misaligned
        frames are missing from the counts."""
        return tuple(s.segment for s in self.segments if s.frames == 0)

    @property
    def locked_after(self) -> int | None:
        """The longest lock-in any run took, in segments; None if a run never locked."""
        taken = [r.lock_in_taken for r in self.runs]
        if not taken or any(t is None for t in taken):
            return None
        return max(t for t in taken if t is not None)

    @property
    def gaps(self) -> dict[str, tuple[tuple[int, int], ...]]:
        return {e.name: e.gaps for e in self.encoders if e.gaps}

    def to_json(self) -> dict[str, Any]:
        """The verification as JSON-ready data (``meshenc verify --json``)."""
        return {
            "locked": self.locked,
            "lock_in": self.lock_in,
            "judged_segments": self.judged,
            "agreed_segments": self.agreed,
            "locked_fraction": self.locked_fraction,
            "locked_after": self.locked_after,
            "misaligned_frames": self.misaligned_frames,
            "lock_in_misaligned_frames": self.lock_in_misaligned_frames,
            "uncounted_segments": list(self.uncounted),
            "encoders": [
                {
                    "name": e.name,
                    "folder": str(e.folder),
                    "segments": len(e.digests),
                    "runs": [list(r) for r in e.runs],
                    "gaps": [list(g) for g in e.gaps],
                    "playlist_problems": list(e.playlist_problems),
                    "lock_in_taken": [r.lock_in_taken for r in self.runs if r.encoder == e.name],
                }
                for e in self.encoders
            ],
            "segments": [
                {
                    "segment": s.segment,
                    "judged": s.judged,
                    "agreed": s.agreed,
                    "identical": s.identical,
                    "reference": s.reference,
                    "frames": s.frames,
                    "misaligned_frames": s.misaligned_frames,
                    "lock_in_misaligned_frames": s.lock_in_misaligned_frames,
                    "copies": {
                        c.encoder: {"digest": c.digest, "lock_in": c.lock_in, "matches": c.matches}
                        for c in s.copies
                    },
                    "gaps": list(s.gaps),
                }
                for s in self.segments
            ],
        }


def _lock_in_copies(output: EncoderOutput, lock_in: int) -> set[int]:
    """The segment numbers of ``output`` that lie in the lock-in window of their run."""
    return {
        number
        for first, last in output.runs
        for number in range(first, min(last, first + lock_in - 1) + 1)
    }


def _reference(judged: Counter[str], everyone: Counter[str]) -> str | None:
    """The most common judged digest; ties broken by all copies; None if still tied."""
    pool = judged if judged else everyone
    top = max(pool.values())
    leaders = [d for d, n in pool.items() if n == top]
    if len(leaders) > 1:
        best = max(everyone[d] for d in leaders)
        leaders = [d for d in leaders if everyone[d] == best]
    return leaders[0] if len(leaders) == 1 else None


def _basis(judged: Counter[str], everyone: Counter[str]) -> str:
    """The copy misaligned frames are counted against: the reference, or in a split the
    (alphabetically first) digest of a largest judged group."""
    reference = _reference(judged, everyone)
    if reference is not None:
        return reference
    pool = judged if judged else everyone
    top = max(pool.values())
    return min(d for d, n in pool.items() if n == top)


def compare(
    outputs: Sequence[EncoderOutput],
    *,
    lock_in: int = DEFAULT_LOCK_IN,
    frames: FrameCounter | int = count_frames,
) -> Verification:
    """Judge every segment number any encoder wrote (see the module docstring).

    Args:
        outputs: the encoders' scanned folders; names must be distinct.
        lock_in: segments at the start of every run exempt from the verdict; >= 0.
        frames: frames per segment, or a function counting them in a segment file; called only
            for segments with differing copies.

    Raises:
        ValueError: duplicate encoder names or a negative ``lock_in``.
    """
    if lock_in < 0:
        raise ValueError(f"lock_in must be >= 0, got {lock_in}")
    names = [o.name for o in outputs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"two output folders have the same name: {', '.join(duplicates)}")
    outputs = sorted(outputs, key=lambda o: o.name)
    exempt = {o.name: _lock_in_copies(o, lock_in) for o in outputs}
    numbers = sorted({n for o in outputs for n in o.digests})

    checks: list[SegmentCheck] = []
    for number in numbers:
        present = [o for o in outputs if number in o.digests]
        everyone = Counter(o.digests[number] for o in present)
        judged = Counter(o.digests[number] for o in present if number not in exempt[o.name])
        reference = _reference(judged, everyone)
        copies = tuple(
            Copy(
                o.name, o.digests[number], number in exempt[o.name], o.digests[number] == reference
            )
            for o in present
        )
        gaps = tuple(o.name for o in outputs if any(a <= number <= b for a, b in o.gaps))
        basis = _basis(judged, everyone)
        judged_differing = sum(1 for c in copies if not c.lock_in and c.digest != basis)
        lock_in_differing = sum(1 for c in copies if c.lock_in and c.digest != basis)
        count: int | None = None
        if judged_differing or lock_in_differing:
            if isinstance(frames, int):
                count = frames
            else:
                # The basis copy first; should it not demux, the first other copy that does.
                holders = sorted(present, key=lambda o: o.digests[number] != basis)
                count = 0
                for holder in holders:
                    count = frames(holder.path(number))
                    if count:
                        break
        checks.append(
            SegmentCheck(
                segment=number,
                copies=copies,
                gaps=gaps,
                reference=reference,
                frames=count,
                misaligned_frames=judged_differing * (count or 0),
                lock_in_misaligned_frames=lock_in_differing * (count or 0),
            )
        )
    by_number = {c.segment: c for c in checks}
    runs = tuple(
        Run(o.name, first, last, _lock_in_taken(o.name, first, last, by_number))
        for o in outputs
        for first, last in o.runs
    )
    return Verification(
        encoders=tuple(outputs),
        segments=tuple(checks),
        runs=runs,
        lock_in=lock_in,
        _by_number=by_number,
    )


def _lock_in_taken(
    encoder: str, first: int, last: int, checks: Mapping[int, SegmentCheck]
) -> int | None:
    """Segments of the run before the copy from which every later copy holds the reference."""
    locked_from: int | None = None
    for number in range(last, first - 1, -1):
        copy = next(c for c in checks[number].copies if c.encoder == encoder)
        if not copy.matches and len(checks[number].copies) >= 2:
            break
        locked_from = number
    return None if locked_from is None else locked_from - first


def verify(
    folders: Iterable[Path],
    *,
    lock_in: int = DEFAULT_LOCK_IN,
    frames: FrameCounter | int = count_frames,
) -> Verification:
    """Scan the folders (see :func:`find_outputs`) and compare them.

    Raises:
        NotADirectoryError: a path is not a folder.
        ValueError: as :func:`compare`.
    """
    return compare(
        [scan_output(folder) for folder in find_outputs(folders)], lock_in=lock_in, frames=frames
    )


def unit_folders(out_dir: Path) -> dict[str, list[Path]]:
    """A run's work-unit folders by unit: which encoders wrote each, whatever their masters
    list now. A unit is an ABR ladder's rung (``<encoder>/<W>x<H>/`` holding segments, unit
    ``WxH``); with several channels (``<encoder>/<channel>/``) a channel's output (unit
    ``<channel>``) or each of its rungs (unit ``<channel>/<W>x<H>``). Empty for a run of one
    channel without a ladder.

    Raises:
        NotADirectoryError: ``out_dir`` is not a folder.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is not a folder")
    found: dict[str, list[Path]] = {}
    for encoder in sorted(p for p in out_dir.iterdir() if p.is_dir() and p.name != ORIGIN_DIR):
        for unit, folder in output_units(encoder).items():
            found.setdefault(unit, []).append(folder)
    return found


def output_units(output: Path) -> dict[str, Path]:
    """The work-unit folders of one output (an encoder's folder, or the origin's recording,
    which has the same layout), by unit as :func:`unit_folders` names them."""
    found: dict[str, Path] = {}
    for sub in sorted(p for p in output.iterdir() if p.is_dir()):
        if rung_pixels(sub.name):
            if _holds_segments(sub):
                found[sub.name] = sub
            continue
        if _has_segment_files(sub):
            found[sub.name] = sub
        for rung in sorted(p for p in sub.iterdir() if p.is_dir()):
            if rung_pixels(rung.name) and _holds_segments(rung):
                found[f"{sub.name}/{rung.name}"] = rung
    return found


def rung_pixels(name: str) -> int:
    """The picture size a rung's name ``<W>x<H>`` (a folder, or a unit's last part) says;
    0 for a name that is no rung's."""
    width, x, height = name.partition("x")
    return int(width) * int(height) if x and width.isdigit() and height.isdigit() else 0


def verify_units(
    out_dir: Path,
    *,
    lock_in: int = DEFAULT_LOCK_IN,
    frames: FrameCounter | int = count_frames,
) -> dict[str, Verification]:
    """Per work unit of a run (:func:`unit_folders`), the comparison of the encoders that
    wrote it, each output named after its encoder (the folder under ``out_dir``); empty for
    one channel without a ladder.

    Raises:
        NotADirectoryError: ``out_dir`` is not a folder.
    """
    out_dir = Path(out_dir)
    return {
        unit: compare(
            [scan_output(folder, folder.relative_to(out_dir).parts[0]) for folder in folders],
            lock_in=lock_in,
            frames=frames,
        )
        for unit, folders in sorted(unit_folders(out_dir).items())
    }
