"""Scoring a run from what it recorded, never from what the engines claim.

Definitions (the README and ``meshenc sim --help`` refer here):

- ``misaligned_frames``: after the warm-up, the number of (encoder, picture) pairs whose
  timecode differs from the mesh majority for that picture. The majority is the most common
  timecode among the honest encoders that emitted the picture (ties: the smaller timecode).
  Dropped pictures are not counted: they were not emitted with any timecode.
- ``max_abs_offset_ms``: after the warm-up, the largest distance between an honest encoder's
  label for a picture and the median label of that picture.
- ``corrections``: corrections applied by honest encoders after the warm-up, by kind.
- ``median_lead_ms``: for predictive corrections after the warm-up, the median time between
  the correction and the moment the error, at its rate then, would have crossed the half-frame
  boundary where the reactive strategy acts. Null when there is none.
- ``lock_in_s``: seconds from the start after which no picture is misaligned on any honest
  encoder; null when misalignment continues into the last second.
- ``repeated_slots`` / ``dropped_frames``: output slots filled by repeating a picture and
  pictures not emitted, on honest encoders after the warm-up.

Liars are excluded from every figure: the question is whether honest encoders stay locked.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass

import numpy as np

from meshenc.core.messages import CorrectionKind
from meshenc.sim.runner import Recording

__all__ = ["Score", "score"]


@dataclass(frozen=True, slots=True)
class Score:
    strategy: str
    encoders: int
    duration_s: float
    warmup_s: float
    seed: int
    misaligned_frames: int
    misaligned_fraction: float
    max_abs_offset_ms: float
    corrections: dict[str, int]
    corrections_total: int
    median_lead_ms: float | None
    lock_in_s: float | None
    repeated_slots: int
    dropped_frames: int
    escalations: int
    wall_s: float
    events: int
    events_per_s: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def majority_timecodes(timecodes: np.ndarray) -> np.ndarray:
    """Most common non-negative timecode per column (-1 where no encoder emitted it)."""
    result = np.full(timecodes.shape[1], -1, dtype=np.int64)
    valid = timecodes >= 0
    lows = np.where(valid, timecodes, np.iinfo(np.int64).max).min(axis=0)
    highs = np.where(valid, timecodes, -1).max(axis=0)
    uniform = (lows == highs) & valid.any(axis=0)
    result[uniform] = lows[uniform]
    for k in np.flatnonzero(~uniform & valid.any(axis=0)):
        values, counts = np.unique(timecodes[valid[:, k], k], return_counts=True)
        result[k] = values[np.argmax(counts)]
    return result


def score(rec: Recording) -> Score:
    scenario = rec.scenario
    fr = scenario.frame_rate
    honest = np.array([i not in rec.world.liars for i in range(scenario.mesh.encoders)])
    tcs = rec.timecodes[honest]
    labels = rec.labels[honest]
    frames = tcs.shape[1]
    warm = min(frames, math.ceil(scenario.mesh.warmup_s * fr.num / fr.den))
    majority = majority_timecodes(tcs)
    misaligned = (tcs >= 0) & (tcs != majority[np.newaxis, :])
    after = misaligned[:, warm:]
    count = int(after.sum())
    emitted = int((tcs[:, warm:] >= 0).sum())

    bad_columns = np.flatnonzero(misaligned.any(axis=0))
    if bad_columns.size == 0:
        lock_in: float | None = 0.0
    elif bad_columns[-1] >= frames - math.ceil(fr.fps):
        lock_in = None
    else:
        lock_in = float((bad_columns[-1] + 1) * fr.period)

    tail = labels[:, warm:]
    if tail.size:
        median = np.nanmedian(tail, axis=0)
        max_offset = float(np.nanmax(np.abs(tail - median[np.newaxis, :]))) * 1000.0
    else:
        max_offset = 0.0

    warm_at = rec.world.start + scenario.mesh.warmup_s
    liars = rec.world.liars
    late = [c for c in rec.corrections if c.at >= warm_at and c.encoder not in liars]
    kinds = Counter(c.kind for c in late)
    leads = [c.lead for c in late if not math.isnan(c.lead) and c.lead > 0.0]
    median_lead = float(np.median(leads)) * 1000.0 if leads else None

    return Score(
        strategy=rec.strategy.value,
        encoders=scenario.mesh.encoders,
        duration_s=scenario.mesh.duration_s,
        warmup_s=scenario.mesh.warmup_s,
        seed=scenario.seed,
        misaligned_frames=count,
        misaligned_fraction=count / emitted if emitted else 0.0,
        max_abs_offset_ms=round(max_offset, 3),
        corrections={kind.value: kinds.get(kind, 0) for kind in CorrectionKind},
        corrections_total=len(late),
        median_lead_ms=None if median_lead is None else round(median_lead, 1),
        lock_in_s=None if lock_in is None else round(lock_in, 3),
        repeated_slots=int(rec.repeats[honest][:, warm:].sum()),
        dropped_frames=int((tcs[:, warm:] < 0).sum()),
        escalations=rec.escalations,
        wall_s=round(rec.wall_s, 3),
        events=rec.events,
        events_per_s=round(rec.events / rec.wall_s, 1) if rec.wall_s > 0 else 0.0,
    )
