"""``report.html``: one self-contained page (inline CSS, no scripts) that links the PNG plots
and the player's screenshot.

Built with the standard library only: ``string.Template`` for the page and ``html.escape`` for
every value that came from a file or an encoder (ids, digests, problems), so an odd encoder
name cannot inject markup.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from html import escape
from pathlib import Path
from string import Template
from typing import Final

from meshenc.report.playback import (
    MAX_PROGRESS_GAP_S,
    PLAYER_DIR,
    SCREENSHOT_NAME,
    PlaybackResult,
)
from meshenc.report.plots import (
    IDENTITY_PNG,
    IDENTITY_STATES,
    LEADERS_PNG,
    OFFSETS_PNG,
    OFFSETS_PREDICTED_PNG,
    identity_matrix,
)
from meshenc.report.recorder import StateEvent
from meshenc.report.recording import AUDIO_TOLERANCE_TICKS
from meshenc.report.summary import RunRecord, Summary, arrival_figures, median_error_ms

__all__ = ["REPORT_NAME", "render_report"]

REPORT_NAME = "report.html"

_PAGE = Template("""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>meshenc run report</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 72em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; }
.verdict { font-size: 1.15em; padding: .6em 1em; border-radius: 4px; }
.locked { background: #e8f5e9; border-left: 6px solid #2e7d32; }
.unlocked { background: #ffebee; border-left: 6px solid #d32f2f; }
.skipped { background: #fff8e1; border-left: 6px solid #f9a825; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f5f5f5; } td.name, th.name { text-align: left; }
td.cell { font-family: monospace; text-align: center; }
$cell_styles
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: .9em; color: #555; }
dt { font-weight: bold; margin-top: .5em; } dd { margin-left: 1.5em; }
</style>
</head>
<body>
<h1>meshenc run report</h1>
<p class="verdict $verdict_class">$line</p>
<p>Run folder <code>$out_dir</code>; figures in <a href="summary.json">summary.json</a>, computed
from the segment files and <code>events.jsonl</code> ($events events recorded$skipped).</p>

<h2>Summary</h2>
$summary_table

<h2>Encoders</h2>
$encoder_table

<h2>Work units</h2>
$unit_table

<h2>Failovers and joins</h2>
$failover_table
$join_table

<h2>Playback: a browser on the origin</h2>
$playback

<h2>Playback: the same browser on the redundant encoders</h2>
$redundant

<h2>Playback: the same browser on the origin's DASH manifest</h2>
$dash

<h2>The origin's recording</h2>
$recording

<h2>Offsets</h2>
<figure><img src="$offsets_png" alt="error of every encoder over time">
<figcaption>Each encoder's error (its label minus where it believes the timeline is), from its
GetState answers; markers are the corrections it applied.</figcaption></figure>
<figure><img src="$offsets_predicted_png" alt="error and predicted error over time">
<figcaption>The same with the error its Kalman filter predicted one horizon ahead (dashed):
corrections fire before the predicted curve reaches half a frame.</figcaption></figure>

<h2>Segment leaders</h2>
<figure><img src="$leaders_png" alt="segment leader timeline">
<figcaption>Who led each encoder group when; dotted lines mark killed (red) and joined (green)
encoders.</figcaption></figure>

<h2>Segment identity</h2>
<figure><img src="$identity_png" alt="segment identity matrix">
<figcaption>One row per encoder, one column per segment: did the encoder write the segment's
reference (majority's) bytes?</figcaption></figure>
$identity_table

<h2>Definitions</h2>
<dl>
<dt>Reference bytes</dt><dd>Of a segment: the SHA-256 held by the most copies past lock-in
(ties broken by all copies); none when still tied (a split).</dd>
<dt>Lock-in</dt><dd>The first $lock_in segments of every run of consecutive segments of an
encoder (after its start or a gap) are exempt from the verdict.</dd>
<dt>Judged / agreed segment</dt><dd>Judged: at least two copies, one past lock-in. Agreed:
judged, and every copy past lock-in holds the reference bytes. Locked fraction = agreed /
judged.</dd>
<dt>Locked after segment N</dt><dd>The longest any encoder's run took (in segments) before
every later copy of it held the reference bytes.</dd>
<dt>Misaligned frames</dt><dd>A frame is misaligned when encoders disagree on the timecode of
the same source picture; from the files, every copy past lock-in that differs from the
reference counts the frames of its segment (access units in the reference copy); in a split,
all copies but one largest group count. Differing lock-in copies are counted apart.</dd>
<dt>Failover</dt><dd>From the launcher's <code>killed</code> event of a group's leader to the
next leader of that group.</dd>
<dt>Join</dt><dd>From a <code>joined</code> event to the start (segment × GOP / fps) of the
joined encoder's first segment holding the reference bytes.</dd>
<dt>Stall</dt><dd>A <code>waiting</code> event of the player's video element after it first
played. Errors: every hls.js <code>ERROR</code> event, fatal or not.</dd>
<dt>Longest gap</dt><dd>The longest wall time after start-up between two samples (every
250 ms) at which the playback position had advanced; the bound is $max_gap s.</dd>
<dt>Recording</dt><dd>The segments the origin received, decoded in number order: none missing,
video PTS one frame apart throughout, audio frames end to end (within $audio_ticks ticks of
90 kHz), and no discontinuity in the served playlist.</dd>
</dl>
</body>
</html>
""")


def _table(headers: Sequence[str], rows: Iterable[Sequence[str]], *, raw: bool = False) -> str:
    """An HTML table; cells are escaped unless ``raw`` (then the caller escaped them)."""
    head = "".join(
        f'<th class="name">{escape(h)}</th>' if i == 0 else f"<th>{escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            text = cell if raw else escape(cell)
            cells.append(f'<td class="name">{text}</td>' if i == 0 else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def _summary_table(summary: Summary) -> str:
    fraction = summary.locked_fraction
    kinds, after = summary.corrections, summary.locked_after
    uncounted = summary.uncounted_segments
    rows = [
        ("encoders", str(len(summary.encoders))),
        ("segments written (distinct numbers)", str(summary.segments)),
        ("judged segments", str(summary.judged_segments)),
        ("agreed segments", str(summary.agreed_segments)),
        ("locked fraction", "—" if fraction is None else f"{fraction * 100:.1f} %"),
        ("locked", "yes" if summary.locked else "no"),
        ("lock-in window (segments per run)", str(summary.lock_in)),
        ("locked after segment", "never" if after is None else str(after)),
        ("misaligned frames", str(summary.misaligned_frames)),
        ("misaligned frames during lock-in", str(summary.lock_in_misaligned_frames)),
        ("differing segments that did not demux (frames not counted)", str(len(uncounted))),
        ("corrections recorded", ", ".join(f"{k} {v}" for k, v in kinds.items()) or "none"),
        ("failover (longest)", _ms(summary.failover_ms)),
        ("join (longest)", _ms(summary.join_ms)),
    ]  # fmt: skip
    return _table(("figure", "value"), rows)


def _encoder_table(run: RunRecord) -> str:
    states: dict[str, list[StateEvent]] = defaultdict(list)
    for state in run.events.states():
        states[state["encoder"]].append(state)
    corrections: dict[str, Counter[str]] = defaultdict(Counter)
    for c in run.events.corrections():
        corrections[c["encoder"]][c["correction"]] += 1
    result = run.verification
    differing = Counter(
        c.encoder for s in result.segments for c in s.copies if not c.lock_in and not c.matches
    )
    arrivals = arrival_figures(states)
    rows = []
    for output in result.encoders:
        name = output.name
        taken = [r.lock_in_taken for r in result.runs if r.encoder == name]
        error = median_error_ms(states[name])
        jitter, delay = arrivals.get(name, (None, None))
        rows.append(
            (
                name,
                str(len(output.digests)),
                ", ".join(f"{a}–{b}" if a != b else str(a) for a, b in output.gaps) or "none",
                ", ".join("never" if t is None else str(t) for t in taken),
                str(differing[name]),
                ", ".join(f"{k} {v}" for k, v in sorted(corrections[name].items())) or "none",
                "—" if error is None else f"{error:.2f} ms",
                "—" if jitter is None else f"{jitter:.2f} ms",
                "—" if delay is None else f"+{delay:.1f} ms",
                "; ".join(output.playlist_problems) or "ok",
            )
        )
    return _table(
        (
            "encoder",
            "segments",
            "gaps",
            "lock-in taken (per run)",
            "differing copies past lock-in",
            "corrections",
            "median |error|",
            "arrival jitter",
            "ingest delay vs earliest",
            "playlist",
        ),
        rows,
    )


def _failover_table(summary: Summary) -> str:
    if not summary.failovers:
        return "<p>No group leader was killed in this run.</p>"
    rows = [
        (f.group or "(no group)", f.killed, f.new_leader or "none recorded", _ms(f.ms))
        for f in summary.failovers
    ]
    return _table(("group", "killed leader", "new leader", "failover"), rows)


def _join_table(summary: Summary) -> str:
    if not summary.joins:
        return "<p>No encoder joined during this run.</p>"
    rows = [
        (
            j.encoder,
            "none" if j.first_agreed_segment is None else str(j.first_agreed_segment),
            _ms(j.ms),
        )
        for j in summary.joins
    ]
    return _table(("joined encoder", "first segment with the reference bytes", "join"), rows)


#: The report's colour of each playback verdict (the terminal's is in ``meshenc up``).
_PLAYBACK_CLASS: Final = {"smooth": "locked", "skipped": "skipped", "not smooth": "unlocked"}


def _playback(run: RunRecord, summary: Summary) -> str:
    result = summary.playback
    if result is None:
        return "<p>No player ran in this run.</p>"
    verdict = _PLAYBACK_CLASS[result.verdict]
    parts = [f'<p class="verdict {verdict}">{escape(result.line)}</p>']
    if result.skipped is not None:
        return "".join(parts)
    rows = [
        ("player", f"{result.engine} {result.engine_version or '?'} in Chromium "
         f"{result.browser or '?'}"),
        ("stream", result.url or "—"),
        ("start-up", "—" if result.startup_s is None else f"{result.startup_s:.2f} s"),
        ("stalls after start-up (waiting)", str(len(result.stalls))),
        ("stalled events", str(result.stalled_events)),
        ("player errors (fatal)", f"{len(result.errors)} ({sum(e.fatal for e in result.errors)})"),
        ("longest gap in progress", "—" if result.longest_gap_s is None
         else f"{result.longest_gap_s:.2f} s"),
        ("played / wall", f"{result.played_s:.1f} s / {result.wall_s:.1f} s"),
        ("seeks after start-up", str(result.seeks)),
        ("fragments played (skipped)", f"{result.fragments} ({result.skipped_fragments})"),
        ("discontinuities seen", str(result.discontinuities)),
        *(
            (
                f"{w.kind} {w.encoder}",
                "while the browser played" if w.during_playback else "not while it played",
            )
            for w in summary.watched
        ),
        ("stopped", result.stop_reason or "—"),
    ]  # fmt: skip
    parts.append(_table(("figure", "value"), rows))
    if result.errors:
        parts.append(
            _table(
                ("error", "fatal", "time", "reason"),
                (
                    (f"{e.type} {e.details}", "yes" if e.fatal else "no", f"{e.t:.1f}", e.reason)
                    for e in result.errors
                ),
            )
        )
    shot = Path(run.out_dir) / PLAYER_DIR / SCREENSHOT_NAME
    if result.screenshot and shot.is_file():
        link = escape(f"{PLAYER_DIR}/{SCREENSHOT_NAME}", quote=True)
        parts.append(
            f'<figure><img src="{link}" alt="the player page during the run">'
            "<figcaption>The player page, taken while it played the origin's stream: position,"
            " buffer and the fragment playing, and its counts of waits and errors.</figcaption>"
            "</figure>"
        )
    return "".join(parts)


def _dash(summary: Summary) -> str:
    """The dash.js player of the origin's MPD (CMAF runs), and hls.js on a placed ladder's
    channel master."""
    parts = []
    for played in (summary.channel, summary.abr):
        if played is not None:
            parts.append(_played(played))
    if summary.dash is None:
        parts.append("<p>No DASH player ran in this run (it plays CMAF runs' manifests).</p>")
    else:
        parts.append(_played(summary.dash))
    return "".join(parts)


def _played(result: PlaybackResult) -> str:
    """One more player's verdict line and its errors."""
    verdict = "locked" if result.smooth else "unlocked"
    parts = [f'<p class="verdict {verdict}">{escape(result.line)}</p>']
    if result.errors:
        parts.append(
            _table(
                ("error", "time", "reason"),
                ((f"{e.type} {e.details}", f"{e.t:.1f}", e.reason) for e in result.errors),
            )
        )
    return "".join(parts)


def _redundant(summary: Summary) -> str:
    """The second player, on the master playlist of redundant encoders, and its failover."""
    result, failover = summary.redundant, summary.player_failover
    if result is None:
        return "<p>No player of the master playlist ran in this run.</p>"
    parts = [f"<p>{escape(result.line)} (stream {escape(result.url or '—')})</p>"]
    if failover is None:
        return "".join(parts) + "<p>No kill while it played.</p>"
    good = failover.on_killed and failover.switch_ms is not None and not failover.sequence_gaps
    verdict = "locked" if good and not failover.differing else "unlocked"
    parts.append(f'<p class="verdict {verdict}">{escape(failover.line)}</p>')
    rows = (
        (
            f"{f.after_kill_s:+.2f} s",
            str(f.sn),
            f.encoder or "?",
            {True: "yes", False: "no", None: "—"}[f.holds_reference],
        )
        for f in failover.fragments
    )
    parts.append(
        _table(("loaded (from the kill)", "fragment", "from", "the majority's bytes"), rows)
    )
    return "".join(parts)


def _recording(summary: Summary) -> str:
    check = summary.recording
    if check is None:
        return "<p>No origin recording in this run.</p>"
    verdict = "locked" if check.continuous else "unlocked"
    first = check.segments[0] if check.segments else None
    last = check.segments[-1] if check.segments else None
    rows = [
        ("segments (first–last)", f"{len(check.segments)} ({first}–{last})"),
        ("missing segments", ", ".join(map(str, check.missing)) or "none"),
        ("undecodable segments", "; ".join(check.undecodable) or "none"),
        ("video frames", f"{check.video_frames} ({check.seconds:.1f} s)"),
        ("video PTS jumps", str(len(check.video_jumps))),
        ("audio frames", str(check.audio_frames)),
        ("audio gaps/overlaps", str(len(check.audio_jumps))),
        ("largest audio gap or overlap", f"{check.worst_audio_ticks:.1f} ticks"),
        ("served playlist", "; ".join(check.playlist_problems) or "ok"),
    ]
    return f'<p class="verdict {verdict}">{escape(check.line)}</p>' + _table(
        ("figure", "value"), rows
    )


def _unit_table(summary: Summary) -> str:
    """Per work unit (placed rungs, channels): who wrote it, its copies, and its recording at
    the origin."""
    if not summary.rungs:
        return "<p>One output: every encoder wrote the same unit (the summary above).</p>"
    rows = [
        (
            unit.rung,
            ", ".join(f"{e} ({n})" for e, n in unit.holders.items()),
            str(unit.segments),
            "—" if unit.min_copies is None else str(unit.min_copies),
            f"{unit.identical}/{unit.shared}",
            "—" if unit.origin is None else unit.origin.verdict,
        )
        for unit in summary.rungs
    ]
    headers = (
        "unit",
        "holders (segments written)",
        "segments",
        "fewest copies",
        "identical shared segments",
        "origin",
    )
    return _table(headers, rows)


def _identity_table(run: RunRecord) -> str:
    names, numbers, cells = identity_matrix(run)
    if not numbers:
        return "<p>No segment files.</p>"
    short = {check.segment: check for check in run.verification.segments}
    headers = ["segment", *names, "verdict"]
    rows = []
    for column, number in enumerate(numbers):
        check = short[number]
        copies = {c.encoder: c for c in check.copies}
        row = [f"{escape(str(number))} (+{number - numbers[0]})"]
        for r, name in enumerate(names):
            state = IDENTITY_STATES[cells[r][column]][0]
            copy = copies.get(name)
            text = escape(copy.digest[:8]) if copy else ("gap" if state == "gap" else "")
            row.append(f'<span class="{state}">{text}</span>')
        if not check.judged:
            verdict = "not judged"
        elif check.agreed:
            verdict = "agreed"
        else:
            verdict = f"differs ({check.misaligned_frames} frames)"
        row.append(escape(verdict))
        rows.append(row)
    return _table(headers, rows, raw=True)


def _cell_styles() -> str:
    return "\n".join(
        f"span.{name} {{ background: {colour}; padding: 0 .3em; }}"
        for name, colour, _ in IDENTITY_STATES
    )


def render_report(run: RunRecord, summary: Summary, plots_dir: str) -> str:
    """The page's HTML; ``plots_dir`` is the PNGs' folder relative to the page."""

    def link(name: str) -> str:
        return escape(f"{plots_dir}/{name}", quote=True)

    skipped = summary.skipped_event_lines
    return _PAGE.substitute(
        cell_styles=_cell_styles(),
        verdict_class="locked" if summary.locked else "unlocked",
        line=escape(summary.line),
        out_dir=escape(str(Path(run.out_dir))),
        events=summary.events,
        skipped=f", {skipped} unreadable lines skipped" if skipped else "",
        summary_table=_summary_table(summary),
        encoder_table=_encoder_table(run),
        unit_table=_unit_table(summary),
        failover_table=_failover_table(summary),
        join_table=_join_table(summary),
        offsets_png=link(OFFSETS_PNG),
        offsets_predicted_png=link(OFFSETS_PREDICTED_PNG),
        leaders_png=link(LEADERS_PNG),
        identity_png=link(IDENTITY_PNG),
        identity_table=_identity_table(run),
        lock_in=summary.lock_in,
        playback=_playback(run, summary),
        redundant=_redundant(summary),
        dash=_dash(summary),
        recording=_recording(summary),
        max_gap=f"{MAX_PROGRESS_GAP_S:g}",
        audio_ticks=AUDIO_TOLERANCE_TICKS,
    )
