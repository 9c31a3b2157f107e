"""The report's PNG plots, drawn with matplotlib's Agg renderer (no display needed).

Each function draws one figure from a :class:`~meshenc.report.summary.RunRecord` and writes
it; none reads anything else. Figures are built with ``matplotlib.figure.Figure`` directly,
never ``pyplot``, so no global state (backends, open figures) outlives a call. What every
plot shows and how it is computed is in ``docs/report.md``.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from meshenc.report.summary import RunRecord, leader_timeline

__all__ = [
    "IDENTITY_PNG",
    "LEADERS_PNG",
    "OFFSETS_PNG",
    "OFFSETS_PREDICTED_PNG",
    "identity_matrix",
    "plot_identity",
    "plot_leaders",
    "plot_offsets",
    "write_plots",
]

OFFSETS_PNG = "offsets.png"
OFFSETS_PREDICTED_PNG = "offsets-predicted.png"
LEADERS_PNG = "leaders.png"
IDENTITY_PNG = "identity.png"

DPI = 100
#: Marker per correction kind on the offset plots.
MARKERS = {"slew": "o", "drop": "v", "duplicate": "^", "parameter": "D"}

#: Cell states of the identity matrix, in colour-map order.
IDENTITY_STATES = (
    ("absent", "#ffffff", "not running"),
    ("gap", "#9e9e9e", "gap (missing while running)"),
    ("lock_in_differs", "#ffcc80", "lock-in, differs"),
    ("lock_in_matches", "#c5e1a5", "lock-in, majority's bytes"),
    ("differs", "#d32f2f", "differs from the majority"),
    ("matches", "#2e7d32", "majority's bytes"),
    ("alone", "#90caf9", "only copy"),
)
_STATE_INDEX = {name: i for i, (name, _, _) in enumerate(IDENTITY_STATES)}


def _empty(fig: Figure, message: str) -> None:
    ax = fig.add_subplot()
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="#555555")
    ax.set_axis_off()


def _origin(run: RunRecord) -> float:
    """The time axis' zero: the first recorded event."""
    return min((e["t"] for e in run.events.events), default=0.0)


def plot_offsets(run: RunRecord, path: Path, *, predicted: bool) -> Path:
    """Each encoder's error (label minus its timeline) over time; optionally the predicted
    error dashed in the same colour; corrections as markers on the curve."""
    fig = Figure(figsize=(10, 4.8), dpi=DPI, layout="constrained")
    states = run.events.states()
    if not states:
        _empty(fig, "no GetState answers recorded")
        fig.savefig(path)
        return path
    origin = _origin(run)
    ax = fig.add_subplot()
    by_encoder: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for s in states:
        by_encoder[s["encoder"]].append(
            (s["t"] - origin, s["error_ns"] / 1e6, s["predicted_error_ns"] / 1e6)
        )
    colours = {}
    for name in sorted(by_encoder):
        points = sorted(by_encoder[name])
        t = [p[0] for p in points]
        (line,) = ax.plot(t, [p[1] for p in points], linewidth=1.4, label=f"{name}")
        colours[name] = line.get_color()
        if predicted:
            ax.plot(
                t,
                [p[2] for p in points],
                linestyle="--",
                linewidth=1.1,
                color=line.get_color(),
                label=f"{name} predicted",
            )
    kinds_seen = set()
    for c in run.events.corrections():
        points = sorted(by_encoder.get(c["encoder"], []))
        if not points:
            continue
        when = c["at"] - origin
        # Place the marker on the encoder's curve: the answer nearest in time.
        nearest = min(points, key=lambda p: abs(p[0] - when))
        ax.plot(
            [when],
            [nearest[1]],
            marker=MARKERS.get(c["correction"], "x"),
            markersize=7,
            linestyle="none",
            markeredgecolor="black",
            color=colours.get(c["encoder"], "black"),
        )
        kinds_seen.add(c["correction"])
    ax.axhline(0.0, color="#888888", linewidth=0.8)
    ax.set_xlabel("seconds since the first recorded event")
    ax.set_ylabel("error: label − timeline (ms)")
    title = "Offset per encoder" + (
        ", measured (solid) and predicted (dashed)" if predicted else ""
    )
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    for kind in sorted(kinds_seen):
        (marker,) = ax.plot(
            [], [], marker=MARKERS.get(kind, "x"), linestyle="none", color="black", label=kind
        )
        handles.append(marker)
        labels.append(f"correction: {kind}")
    ax.legend(handles, labels, loc="upper right", fontsize=8, ncols=2)
    ax.grid(alpha=0.3)
    fig.savefig(path)
    return path


def plot_leaders(run: RunRecord, path: Path) -> Path:
    """Who led each encoder group when: one bar row per group, one colour per leader, with
    the launcher's killed (red) and joined (green) events as vertical lines."""
    timeline = leader_timeline(run.events)
    groups = sorted({c.group for c in timeline})
    fig = Figure(figsize=(10, 1.8 + 0.45 * len(groups)), dpi=DPI, layout="constrained")
    if not timeline:
        _empty(fig, "no segment leader recorded")
        fig.savefig(path)
        return path
    origin = _origin(run)
    end = max(e["t"] for e in run.events.events) - origin
    ax = fig.add_subplot()
    kills = [
        (e["t"] - origin, e["encoder"]) for e in run.events.lifecycle() if e["kind"] == "killed"
    ]
    leaders = sorted({c.leader for c in timeline})
    colour = dict(zip(leaders, _palette(len(leaders)), strict=True))
    for row, group in enumerate(groups):
        changes = [c for c in timeline if c.group == group]
        for change, following in zip(changes, [*changes[1:], None], strict=True):
            start = change.t - origin
            stop = (following.t - origin) if following else end
            # A killed leader leads no more, whether or not a successor was recorded.
            stop = min([stop, *(t for t, who in kills if who == change.leader and start < t)])
            ax.broken_barh(
                [(start, max(stop - start, 0.01))],
                (row - 0.35, 0.7),
                facecolors=colour[change.leader],
            )
            ax.text(
                start,
                row,
                f" {change.leader}",
                va="center",
                fontsize=8,
                clip_on=True,
                bbox={"facecolor": "white", "alpha": 0.7, "linewidth": 0, "pad": 1},
            )
    for event in run.events.lifecycle():
        if event["kind"] in ("killed", "joined"):
            ax.axvline(
                event["t"] - origin,
                color="#d32f2f" if event["kind"] == "killed" else "#2e7d32",
                linestyle=":",
                linewidth=1.2,
            )
    ax.set_yticks(range(len(groups)), [g or "(no group)" for g in groups])
    ax.set_xlabel("seconds since the first recorded event")
    source = "launcher's leader events" if timeline[0].source == "leader" else "GetState answers"
    ax.set_title(f"Segment leaders (from the {source}; dotted: killed red, joined green)")
    ax.legend(
        handles=[Patch(color=colour[name], label=name) for name in leaders],
        loc="upper right",
        fontsize=8,
    )
    ax.set_xlim(0, max(end, 0.01))
    fig.savefig(path)
    return path


def _palette(count: int) -> list[tuple[float, float, float, float]]:
    cmap = colormaps["tab20"]
    return [cmap(i % cmap.N) for i in range(count)]


def identity_matrix(run: RunRecord) -> tuple[list[str], list[int], list[list[int]]]:
    """Rows (encoders), columns (segment numbers) and the state index of every cell."""
    result = run.verification
    names = [e.name for e in result.encoders]
    numbers = [s.segment for s in result.segments]
    cells = []
    for name in names:
        row = []
        for check in result.segments:
            copy = next((c for c in check.copies if c.encoder == name), None)
            if copy is None:
                state = "gap" if name in check.gaps else "absent"
            elif len(check.copies) < 2:
                state = "alone"
            elif copy.lock_in:
                state = "lock_in_matches" if copy.matches else "lock_in_differs"
            else:
                state = "matches" if copy.matches else "differs"
            row.append(_STATE_INDEX[state])
        cells.append(row)
    return names, numbers, cells


def plot_identity(run: RunRecord, path: Path) -> Path:
    """The segment identity matrix: which encoders wrote the majority's bytes, per segment."""
    names, numbers, cells = identity_matrix(run)
    width = min(16.0, max(6.0, 0.18 * len(numbers) + 2.5))
    fig = Figure(figsize=(width, 1.4 + 0.4 * max(len(names), 1)), dpi=DPI, layout="constrained")
    if not numbers:
        _empty(fig, "no segment files")
        fig.savefig(path)
        return path
    ax = fig.add_subplot()
    cmap = ListedColormap([colour for _, colour, _ in IDENTITY_STATES])
    norm = BoundaryNorm([i - 0.5 for i in range(len(IDENTITY_STATES) + 1)], cmap.N)
    ax.imshow(cells, aspect="auto", cmap=cmap, norm=norm, interpolation="nearest")
    ax.set_yticks(range(len(names)), names)
    step = max(1, len(numbers) // 12)
    ticks = list(range(0, len(numbers), step))
    ax.set_xticks(ticks, [str(numbers[i] - numbers[0]) for i in ticks])
    ax.set_xlabel(f"segment (number − {numbers[0]})")
    ax.set_xticks([i - 0.5 for i in range(1, len(numbers))], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, len(names))], minor=True)
    ax.grid(which="minor", color="white", linewidth=0.6)
    ax.tick_params(which="minor", length=0)
    used = sorted({state for row in cells for state in row})
    ax.legend(
        handles=[
            Patch(facecolor=IDENTITY_STATES[i][1], edgecolor="#555555", label=IDENTITY_STATES[i][2])
            for i in used
        ],
        loc="upper center",
        bbox_to_anchor=(0.5, -0.35 if len(names) < 4 else -0.15),
        ncols=min(4, len(used)),
        fontsize=8,
        frameon=False,
    )
    ax.set_title("Segment identity (byte-identical to the segment's majority?)")
    fig.savefig(path)
    return path


def write_plots(run: RunRecord, folder: Path) -> dict[str, Path]:
    """Draw every plot into ``folder``; the PNG paths by file name."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [
        plot_offsets(run, folder / OFFSETS_PNG, predicted=False),
        plot_offsets(run, folder / OFFSETS_PREDICTED_PNG, predicted=True),
        plot_leaders(run, folder / LEADERS_PNG),
        plot_identity(run, folder / IDENTITY_PNG),
    ]
    return {p.name: p for p in paths}
