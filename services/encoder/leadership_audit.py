"""The audit of a segment's leadership from etcd's own history.

Theory of operation: etcd keeps every revision until it is compacted, so the history of the
segment's keys says, revision by revision, who held the leader key (a *tenure* runs from the
put that named its holder -- its fencing token -- to the next put or delete of the key) and
who wrote each act. The audit replays that history and checks two things:

- every act lies inside its author's tenure: at the act's revision the leader key names the
  act's holder and carries the act's token (``acts_outside_tenure``);
- no two leaders acted at once: taking, for each (holder, token), the span of revisions from
  its first to its last act, no two spans overlap (``dual_leader_intervals``). This looks at
  the acts alone, so it would also catch acts that bypassed the leader key altogether.

It needs the history uncompacted (etcd's default: no automatic compaction).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from services.encoder.leadership import SegmentKeys, decode_act, decode_leader

__all__ = ["AuditReport", "HistoryEvent", "Tenure", "audit", "read_history"]


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """One change of one key at one revision."""

    revision: int
    key: bytes
    deleted: bool
    value: bytes = b""


@dataclass(frozen=True, slots=True)
class Tenure:
    """One holder of the leader key: from ``token`` (inclusive) to ``end`` (exclusive)."""

    holder: str
    token: int
    end: int | None
    acts: int = 0


@dataclass(frozen=True, slots=True)
class AuditReport:
    tenures: tuple[Tenure, ...]
    acts: int
    acts_outside_tenure: int
    dual_leader_intervals: int
    malformed: int

    @property
    def ok(self) -> bool:
        return self.acts_outside_tenure == 0 and self.dual_leader_intervals == 0


async def read_history(
    client: Any, keys: SegmentKeys, *, timeout: float = 30.0
) -> list[HistoryEvent]:
    """Every change of the segment's keys since revision 1, in revision order.

    A watch from revision 1 replays the history; to know where it ends, a marker key
    (``<segment>/audit``) is written first and the replay stops at it.
    """
    marker = keys.root + b"audit"
    put = await client.put(marker, b"")
    end = int(put.header.revision)
    watch = await client.watch_prefix(keys.root, start_revision=1)
    events: list[HistoryEvent] = []
    try:
        async with asyncio.timeout(timeout):
            async for event in watch:
                kv = event.kv
                if kv.key != marker:
                    events.append(
                        HistoryEvent(
                            int(kv.mod_revision), bytes(kv.key), event.kind == "DELETE", kv.value
                        )
                    )
                if kv.mod_revision >= end:
                    break
    finally:
        await watch.cancel()
    return events


def audit(events: Iterable[HistoryEvent], keys: SegmentKeys) -> AuditReport:
    """Replay a segment's history (see the module docstring)."""
    tenures: list[Tenure] = []
    current: Tenure | None = None
    acts = outside = malformed = 0
    spans: dict[tuple[str, int], list[int]] = {}

    def close(at: int) -> None:
        nonlocal current
        if current is not None:
            tenures.append(Tenure(current.holder, current.token, at, current.acts))
            current = None

    for event in sorted(events, key=lambda e: e.revision):
        if event.key == keys.leader:
            close(event.revision)
            if not event.deleted:
                holder = decode_leader(event.value)
                if holder is None:
                    malformed += 1
                    holder = "?"
                current = Tenure(holder, event.revision, None)
        elif event.key == keys.acts and not event.deleted:
            act = decode_act(event.value)
            if act is None:
                malformed += 1
                continue
            holder, token, _seq = act
            acts += 1
            if current is None or current.holder != holder or current.token != token:
                outside += 1
            else:
                current = Tenure(current.holder, current.token, None, current.acts + 1)
            span = spans.setdefault((holder, token), [event.revision, event.revision])
            span[1] = event.revision
    if current is not None:
        tenures.append(current)
    ordered = sorted(spans.values())
    dual = sum(
        1
        for i, (_first, last) in enumerate(ordered)
        for other_first, _other_last in ordered[i + 1 :]
        if other_first <= last
    )
    return AuditReport(tuple(tenures), acts, outside, dual, malformed)
