"""Work placement: each work unit on ``redundancy`` encoders, by capacity, moving little.

Theory of operation
-------------------
A work unit is one rendition of one channel. Each must run on ``redundancy`` distinct
encoders (default 2), in distinct failure zones where zones are known, and no encoder carries
more copies than its capacity.

Where a copy goes is decided by **weighted rendezvous hashing** (highest random weight; the
logarithmic method of Schindelhauer and Schomaker, ``score = -capacity / ln(hash01(unit,
encoder))``), which gives every encoder a share proportional to its capacity and, when an
encoder comes or goes, changes the preferred encoders of only the units it gains or loses.
Scoring every unit against every encoder is quadratic (10^8 hashes at 10,000 each), so the
ranking is **two-level** (skeleton-based rendezvous hashing, Wang and Ravishankar 2009):
encoders fall into ``groups`` fixed buckets by a hash of their id; a unit ranks the groups by
weighted rendezvous (group weight = total capacity), then the members of a group by weighted
rendezvous. A unit's *preference order* is: the members of its best group, best first, then
those of its second group, and so on.

**Bounded loads** (in the spirit of Mirrokni, Thorup and Zadimoghaddam's consistent hashing with
bounded loads): hashing alone spreads copies unevenly (at 10,000 encoders of capacity 4 and 0.6
copies each on average, some carried 4 and many none). A copy being placed therefore goes to the
first encoder in its preference order still below its *share*, ``ceil(copies wanted x capacity
/ total capacity)``, and only where none is to the first one below its capacity: copies per
encoder stay within one of the fair share wherever capacities are equal.

Placement is **sticky**: a copy stays where it is while its encoder is alive, within capacity
and zone rules. Then

1. copies that lost their encoder (or were shed over capacity) go to the first valid encoder in
   the unit's preference order (below its share first): *a leave moves exactly the leaver's
   copies*;
2. only when no encoder has room for a unit's missing copy (every one at its capacity, a fleet
   whose measured load is full): a copy shed over capacity goes back where it ran (no move), and
   a copy still missing goes to the first encoder below its *limit* (``Host.limit``: in the
   manager, the registered capacity) — redundancy before the capacity estimate;
3. each joiner takes up to its fair share (``copies x capacity / total capacity``) of the units
   that now prefer it over one of their encoders, replacing that unit's least preferred copy
   where that encoder is above its own fair share rounded up; still short of its fair share
   rounded down (few units: hashing then leaves a joiner with nothing while another encoder
   holds two), it takes copies from the encoders most above theirs, the units that prefer it
   most first: *a join moves copies onto the joiner only*, and takes none from an encoder that
   would fall short.

Invariants:

1. No unit has two copies on one encoder; no encoder exceeds its limit; (in a plan without
   joiners) an encoder above its capacity is so by no more copies than it holds of units that
   no encoder below its capacity could take (each such encoder holds the unit already).
2. Where enough zones exist (known zones plus encoders of unknown zone >= redundancy) copies of a
   unit are in distinct zones unless capacity leaves no other choice; such units are listed in
   ``zone_shared`` (and stay so until a copy has to move anyway). Units short of copies (too
   little capacity) are listed in ``under_replicated``.
3. Deterministic: hashes are keyed BLAKE2b of the ids; ties break by index (sorted id).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = [
    "Host",
    "Placement",
    "PlacementConfig",
    "WorkUnit",
    "place",
    "replica_moves",
]

U64 = npt.NDArray[np.uint64]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

_GROUPS_AHEAD = 4
"""Groups whose members the vectorised pass ranks per unit: when the best group is full (at
its fair share), the next ones usually have room, and the slow walk is rarely needed."""
_RANK_STEP = 1e6
"""Separates the groups' ranks in the vectorised pass's single sort key."""
_CANDIDATES = 30
"""Spare candidates the vectorised pass keeps per unit beyond ``redundancy``; a unit that
finds too few valid ones there (full encoders, zone clashes) walks its full preference."""


@dataclass(frozen=True, slots=True)
class WorkUnit:
    """One rendition of one channel: the thing that is placed."""

    channel: str
    rendition: str

    def __post_init__(self) -> None:
        if not self.channel or not self.rendition or "/" in self.channel:
            raise ValueError(
                f"work unit needs a channel without '/' and a rendition, got "
                f"{self.channel!r}, {self.rendition!r}"
            )

    @property
    def unit_id(self) -> str:
        """``channel/rendition``, the unit's key in a placement."""
        return f"{self.channel}/{self.rendition}"


@dataclass(frozen=True, slots=True)
class Host:
    """An encoder as a place for work: how many copies it takes and where it stands.

    ``capacity`` is what it takes while any encoder has room; ``limit`` (None: the capacity)
    what it takes when none has, rather than leave a unit short of copies.
    """

    encoder_id: str
    capacity: int
    zone: str = ""  # "" = unknown
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.capacity < 0:
            raise ValueError(f"host {self.encoder_id!r}: capacity must be >= 0")
        if self.limit is not None and self.limit < 0:
            raise ValueError(f"host {self.encoder_id!r}: limit must be >= 0")

    @property
    def most(self) -> int:
        """The most copies it ever takes: its limit, and never less than its capacity."""
        return self.capacity if self.limit is None else max(self.capacity, self.limit)


@dataclass(frozen=True, slots=True)
class PlacementConfig:
    """``redundancy`` copies per unit (>= 1); ``groups`` buckets of the two-level ranking."""

    redundancy: int = 2
    groups: int = 128

    def __post_init__(self) -> None:
        if self.redundancy < 1:
            raise ValueError(f"redundancy must be >= 1, got {self.redundancy}")
        if self.groups < 1:
            raise ValueError(f"groups must be >= 1, got {self.groups}")


@dataclass(frozen=True, slots=True)
class Placement:
    """Where every unit runs. ``assignments`` maps unit id to encoder ids (treat as read-only)."""

    assignments: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    hosts: frozenset[str] = frozenset()
    under_replicated: tuple[str, ...] = ()
    zone_shared: tuple[str, ...] = ()

    def load(self) -> dict[str, int]:
        """Copies per encoder (encoders with none included)."""
        counts = dict.fromkeys(sorted(self.hosts), 0)
        for hosts in self.assignments.values():
            for h in hosts:
                counts[h] = counts.get(h, 0) + 1
        return counts


def replica_moves(before: Placement, after: Placement) -> int:
    """Copies that run somewhere new, over units present in both placements."""
    moved = 0
    for unit, hosts in after.assignments.items():
        old = before.assignments.get(unit)
        if old is not None:
            moved += len(set(hosts) - set(old))
    return moved


def _hash64(texts: Sequence[str], salt: bytes) -> U64:
    values = [
        int.from_bytes(hashlib.blake2b(t.encode(), digest_size=8, key=salt).digest(), "little")
        for t in texts
    ]
    return np.array(values, dtype=np.uint64).reshape(len(values))


def _mix(x: U64) -> U64:
    """SplitMix64's finaliser: a cheap, well-spread 64-bit mix, vectorised."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    result: U64 = x ^ (x >> np.uint64(31))
    return result


def _scores(unit_hash: U64, target_hash: U64, log_weight: F64) -> F64:
    """Weighted rendezvous scores in log form, ``ln(w) - ln(-ln(u))`` (broadcasting).

    ``u`` is the pair's hash as a uniform number in (0, 1). This is the logarithm of the
    classic ``-w / ln(u)``: it orders the same way (a weight-``w`` target wins with
    probability proportional to ``w``), and a weight of 0 (``ln w = -inf``) never wins.
    """
    h = _mix(unit_hash ^ target_hash)
    uniform = ((h >> np.uint64(11)).astype(np.float64) + 0.5) * (2.0**-53)
    score: F64 = log_weight - np.log(-np.log(uniform))
    return score


def _log(values: F64) -> F64:
    with np.errstate(divide="ignore"):
        result: F64 = np.log(values)
    return result


_CHUNK = 1024
"""Units scored per vectorised batch: small enough to stay in cache."""


class _Ranking:
    """The two-level rendezvous ranking over the live hosts (private).

    A host's place in a unit's preference order is the pair (its group's score, its own
    score), compared lexicographically, highest first; ties (practically impossible) break
    by group number, then host index. Index ``len(hosts)`` is a sentinel that pads the group
    member table and never wins (weight 0).
    """

    def __init__(self, hosts: Sequence[Host], groups: int) -> None:
        n = len(hosts)
        capacity = np.array([h.capacity for h in hosts] + [0], dtype=np.float64)
        self.capacity = capacity[:n]
        self.log_capacity = _log(capacity)
        self.hash = np.append(_hash64([h.encoder_id for h in hosts], b"meshenc-host"), 0)
        self.hash = self.hash.astype(np.uint64)
        self.group: I64 = ((self.hash[:n] >> np.uint64(32)) % np.uint64(groups)).astype(np.int64)
        self.group_hash = _hash64([str(g) for g in range(groups)], b"meshenc-group")
        self.log_group_weight = _log(
            np.bincount(self.group, weights=self.capacity, minlength=groups).astype(np.float64)
        )
        size = np.bincount(self.group, minlength=groups)
        width = int(size.max()) if n else 0
        self.members: I64 = np.full((groups, max(width, 1)), n, dtype=np.int64)
        fill = np.zeros(groups, dtype=np.int64)
        for j, g in enumerate(self.group.tolist()):
            self.members[g, fill[g]] = j
            fill[g] += 1

    def group_scores(self, unit_hash: U64, groups: I64) -> F64:
        """Scores of ``groups`` (broadcast against ``unit_hash``)."""
        return _scores(unit_hash, self.group_hash[groups], self.log_group_weight[groups])

    def host_scores(self, unit_hash: U64, hosts: I64) -> F64:
        """In-group scores of ``hosts`` (broadcast against ``unit_hash``); -1 scores -inf."""
        hosts = np.where(hosts >= 0, hosts, len(self.capacity))
        return _scores(unit_hash, self.hash[hosts], self.log_capacity[hosts])

    def preference(self, unit_hash: U64, count: int) -> I64:
        """Each unit's ``count`` most preferred hosts of its best ``_GROUPS_AHEAD`` groups, in
        preference order (-1 padded)."""
        ngroups = len(self.group_hash)
        all_groups = np.arange(ngroups, dtype=np.int64)[None, :]
        ahead = min(_GROUPS_AHEAD, ngroups)
        n = len(self.capacity)
        width = self.members.shape[1]
        rank = np.repeat(np.arange(ahead, dtype=np.int64), width)[None, :]
        out = np.full((len(unit_hash), count), -1, dtype=np.int64)
        for start in range(0, len(unit_hash), _CHUNK):
            uh = unit_hash[start : start + _CHUNK, None]
            scores = self.group_scores(uh, all_groups)
            if ahead < ngroups:
                top = np.argpartition(-scores, ahead - 1, axis=1)[:, :ahead]
            else:
                top = np.broadcast_to(all_groups, scores.shape).copy()
            # Best group first; ties (practically impossible) by group number, as everywhere.
            order = np.lexsort((top, -np.take_along_axis(scores, top, axis=1)))
            top = np.take_along_axis(top, order, axis=1)
            cand = self.members[top].reshape(len(uh), ahead * width)  # sentinel-padded
            # One sort key: the group's rank, then the host's score (finite scores lie well
            # within +-1e3 of 0; a host without capacity scores +inf and sorts last).
            key = _RANK_STEP * rank - self.host_scores(uh, cand)
            k = min(count, key.shape[1])
            if k < key.shape[1]:
                pick = np.argpartition(key, k - 1, axis=1)[:, :k]
            else:
                pick = np.broadcast_to(np.arange(k), key.shape).copy()
            picked_key = np.take_along_axis(key, pick, axis=1)
            order = np.argsort(picked_key, axis=1, kind="stable")
            chosen = np.take_along_axis(np.take_along_axis(cand, pick, axis=1), order, axis=1)
            valid = np.isfinite(np.take_along_axis(picked_key, order, axis=1)) & (chosen < n)
            out[start : start + len(uh), :k] = np.where(valid, chosen, -1)
        return out

    def full_preference(self, unit_hash: U64) -> Iterator[int]:
        """One unit's complete preference order over all hosts with capacity, group by group
        as it is consumed (most walks end in the first few groups)."""
        groups = np.arange(len(self.group_hash), dtype=np.int64)
        gs = self.group_scores(unit_hash, groups)
        n = len(self.capacity)
        for g in np.lexsort((groups, -gs)).tolist():
            if gs[g] == -np.inf:
                continue  # no capacity in this group
            members = self.members[g]
            members = members[members < n]
            hs = self.host_scores(unit_hash, members)
            for k in np.lexsort((members, -hs)).tolist():
                if hs[k] > -np.inf:
                    yield int(members[k])


def place(
    units: Sequence[str],
    hosts: Sequence[Host],
    previous: Placement | None,
    config: PlacementConfig,
) -> Placement:
    """Place every unit on ``config.redundancy`` hosts, keeping what can stay.

    Args:
        units: unit ids (see :attr:`WorkUnit.unit_id`); duplicates are ignored.
        hosts: the live encoders that may take work.
        previous: the last placement, or None.
        config: redundancy and ranking groups.
    """
    hosts = sorted({h.encoder_id: h for h in hosts}.values(), key=lambda h: h.encoder_id)
    unit_ids = sorted(set(units))
    host_ids = [h.encoder_id for h in hosts]
    index = {host: j for j, host in enumerate(host_ids)}
    r = config.redundancy
    if not hosts or not unit_ids:
        return Placement(
            assignments={u: () for u in unit_ids},
            hosts=frozenset(index),
            under_replicated=tuple(unit_ids) if unit_ids else (),
        )
    ranking = _Ranking(hosts, config.groups)
    capacity = [h.capacity for h in hosts]
    # A new copy goes where the host is still below its share of all copies (rounded up), so
    # copies spread within one of the fair share; past that, the capacity is the only limit.
    wanted, total_capacity = r * len(unit_ids), sum(capacity)
    share = [min(c, -(-wanted * c // total_capacity)) if total_capacity else 0 for c in capacity]
    zone = [h.zone for h in hosts]
    usable = [j for j in range(len(hosts)) if capacity[j] > 0]
    known_zones = {zone[j] for j in usable if zone[j]}
    enforce_zones = len(known_zones) + sum(1 for j in usable if not zone[j]) >= r
    unit_hash = _hash64(unit_ids, b"meshenc-unit")
    load = [0] * len(hosts)
    assigned: list[list[int]] = [[] for _ in unit_ids]

    def zone_free(j: int, copies: list[int]) -> bool:
        return not zone[j] or all(zone[k] != zone[j] for k in copies)

    # 1. Keep what may stay. A copy that shares a zone stays too (it was the only choice when
    # it was placed; moving it now would be churn), and the unit stays listed as zone-shared.
    zone_shared: set[int] = set()
    shed: list[tuple[int, int]] = []
    if previous is not None:
        for u, unit in enumerate(unit_ids):
            for host in previous.assignments.get(unit, ()):
                j = index.get(host)
                if j is None or capacity[j] == 0 or j in assigned[u] or len(assigned[u]) >= r:
                    continue
                if enforce_zones and not zone_free(j, assigned[u]):
                    zone_shared.add(u)
                assigned[u].append(j)
                load[j] += 1
        shed = _shed_overload(ranking, unit_hash, assigned, load, capacity)
        zone_shared = {u for u in zone_shared if _shares_zone([zone[j] for j in assigned[u]])}

    # 2. Place missing copies in preference order, below the fair share first.
    needy = np.array([u for u in range(len(unit_ids)) if len(assigned[u]) < r], dtype=np.int64)
    if needy.size:
        preference = ranking.preference(unit_hash[needy], _CANDIDATES + r)
        for row, u in zip(preference, needy.tolist(), strict=True):
            copies = assigned[u]
            for j in row.tolist():
                if len(copies) >= r:
                    break
                if j < 0 or j in copies or load[j] >= share[j]:
                    continue
                if enforce_zones and not zone_free(j, copies):
                    continue
                copies.append(j)
                load[j] += 1
            if len(copies) < r:
                passes = ((share, enforce_zones), (capacity, enforce_zones), (capacity, False))
                for limit, strict_zones in passes:
                    for j in ranking.full_preference(unit_hash[u]):
                        if len(copies) >= r:
                            break
                        if j in copies or load[j] >= limit[j]:
                            continue
                        if strict_zones and not zone_free(j, copies):
                            continue
                        if enforce_zones and not zone_free(j, copies):
                            zone_shared.add(u)
                        copies.append(j)
                        load[j] += 1

    # 3. Only where no encoder had room: a copy shed over capacity stays where it ran (no move),
    # then the units still short take encoders up to their limits, in preference order.
    if any(h.most > h.capacity for h in hosts):
        most = [h.most for h in hosts]
        beyond = _beyond_capacity(ranking, unit_hash, assigned, load, most, shed, r, zone_free)
        if enforce_zones:
            zone_shared |= {u for u in beyond if _shares_zone([zone[j] for j in assigned[u]])}

    # 4. Joiners take their fair share of the units that now prefer them.
    if previous is not None:
        joiners = [j for j, h in enumerate(hosts) if h.encoder_id not in previous.hosts]
        if joiners:
            _rebalance(ranking, unit_hash, assigned, load, capacity, joiners, zone_free)
            _fill_joiners(ranking, unit_hash, assigned, load, capacity, joiners, zone_free)

    return Placement(
        assignments={
            unit: tuple([host_ids[j] for j in assigned[u]]) for u, unit in enumerate(unit_ids)
        },
        hosts=frozenset(index),
        under_replicated=tuple(unit_ids[u] for u in range(len(unit_ids)) if len(assigned[u]) < r),
        zone_shared=tuple(unit_ids[u] for u in sorted(zone_shared)),
    )


def _shares_zone(zones: list[str]) -> bool:
    known = [z for z in zones if z]
    return len(set(known)) < len(known)


def _beyond_capacity(
    ranking: _Ranking,
    unit_hash: U64,
    assigned: list[list[int]],
    load: list[int],
    most: list[int],
    shed: list[tuple[int, int]],
    r: int,
    zone_free: Callable[[int, list[int]], bool],
) -> set[int]:
    """Units still short of copies (no encoder had room) get back the copies they were shed
    from, then encoders below their limits, in preference order (zones as far as possible);
    returns the units given a copy."""
    given: set[int] = set()
    for u, j in shed:
        if len(assigned[u]) < r and j not in assigned[u] and load[j] < most[j]:
            assigned[u].append(j)
            load[j] += 1
            given.add(u)
    for u in [u for u in range(len(assigned)) if len(assigned[u]) < r]:
        copies = assigned[u]
        for strict_zones in (True, False):
            for j in ranking.full_preference(unit_hash[u]):
                if len(copies) >= r:
                    break
                if j in copies or load[j] >= most[j]:
                    continue
                if strict_zones and not zone_free(j, copies):
                    continue
                copies.append(j)
                load[j] += 1
                given.add(u)
    return given


def _shed_overload(
    ranking: _Ranking,
    unit_hash: U64,
    assigned: list[list[int]],
    load: list[int],
    capacity: list[int],
) -> list[tuple[int, int]]:
    """Drop copies from encoders above capacity, keeping the units that prefer them most;
    returns the (unit, encoder) copies dropped."""
    over = {j for j in range(len(load)) if load[j] > capacity[j]}
    shed: list[tuple[int, int]] = []
    if not over:
        return shed
    holders: dict[int, list[int]] = {j: [] for j in over}
    for u, copies in enumerate(assigned):
        for j in copies:
            if j in holders:
                holders[j].append(u)
    for j in sorted(over):
        units = np.array(holders[j], dtype=np.int64)
        s = ranking.host_scores(unit_hash[units], np.full(len(units), j, dtype=np.int64))
        keep = {int(units[t]) for t in np.lexsort((units, -s))[: capacity[j]]}
        for u in holders[j]:
            if u not in keep:
                assigned[u].remove(j)
                load[j] -= 1
                shed.append((u, j))
    return shed


def _rebalance(
    ranking: _Ranking,
    unit_hash: U64,
    assigned: list[list[int]],
    load: list[int],
    capacity: list[int],
    joiners: list[int],
    zone_free: Callable[[int, list[int]], bool],
) -> None:
    """Move to each joiner, up to its fair share, copies of the units that prefer it most,
    each from the unit's least preferred encoder if that one is above its own fair share
    (rounded up): a join takes only what an encoder has too much of."""
    total_copies = sum(load)
    total_capacity = sum(capacity)
    width = max((len(c) for c in assigned), default=0)
    if total_capacity == 0 or width == 0:
        return
    units = np.arange(len(assigned), dtype=np.int64)
    floor_share = [total_copies * c // total_capacity for c in capacity]
    ceil_share = [-(-total_copies * c // total_capacity) for c in capacity]
    for x in joiners:
        share = min(capacity[x], floor_share[x]) - load[x]
        if share <= 0:
            continue
        copies = np.full((len(assigned), width), -1, dtype=np.int64)
        for u, c in enumerate(assigned):
            copies[u, : len(c)] = c
        valid = copies >= 0
        safe = np.maximum(copies, 0)
        # Preference keys, lower = more preferred: (-group score, group, -host score).
        c_group = -ranking.group_scores(unit_hash[:, None], ranking.group[safe])
        c_host = -ranking.host_scores(unit_hash[:, None], copies)
        c_group = np.where(valid, c_group, -np.inf)  # padding is never the worst copy
        worst_group = c_group.max(axis=1)
        at_worst = valid & (c_group == worst_group[:, None])
        worst_host = np.where(at_worst, c_host, -np.inf).max(axis=1)
        gx = np.full(len(units), ranking.group[x], dtype=np.int64)
        x_group = -ranking.group_scores(unit_hash, gx)
        x_host = -ranking.host_scores(unit_hash, np.full(len(units), x, dtype=np.int64))
        prefers_x = valid.any(axis=1) & ~(copies == x).any(axis=1)
        prefers_x &= (x_group < worst_group) | ((x_group == worst_group) & (x_host < worst_host))
        wanted = units[prefers_x]
        # The units that want x most first: its group's score, then its own, then index.
        order = np.lexsort((wanted, x_host[wanted], x_group[wanted]))
        for u in wanted[order].tolist():
            if share <= 0 or load[x] >= capacity[x]:
                break
            is_worst = at_worst[u] & (c_host[u] == worst_host[u])
            old = int(copies[u, int(np.argmax(is_worst))])
            others = [j for j in assigned[u] if j != old]
            if load[old] <= ceil_share[old] or not zone_free(x, others):
                continue
            assigned[u][assigned[u].index(old)] = x
            load[old] -= 1
            load[x] += 1
            share -= 1


def _fill_joiners(
    ranking: _Ranking,
    unit_hash: U64,
    assigned: list[list[int]],
    load: list[int],
    capacity: list[int],
    joiners: list[int],
    zone_free: Callable[[int, list[int]], bool],
) -> None:
    """Bring each joiner still short of its fair share rounded down up to it, with copies from
    encoders above theirs (above it rounded up first, then rounded down); then, while an
    encoder is above its fair share rounded up, let a joiner below its own rounded-up share
    take from it. Each time from the donor most above its share, the units that prefer the
    joiner most first. Preference alone leaves a joiner
    with nothing when units are few (measured: two rungs at redundancy 2 on four encoders
    placed 2/1/1/0); after this, copies per encoder are within one of the fair share wherever
    capacities are equal and zones allow."""
    total_copies, total_capacity = sum(load), sum(capacity)
    if total_capacity == 0 or not assigned:
        return
    floor_share = [total_copies * c // total_capacity for c in capacity]
    ceil_share = [-(-total_copies * c // total_capacity) for c in capacity]
    units = np.arange(len(assigned), dtype=np.int64)

    def above(j: int) -> tuple[int, int]:
        """How far above its share ``j`` is (copies x total capacity, exact), and its index."""
        return (total_copies * capacity[j] - load[j] * total_capacity, j)

    # Up to its share rounded down from encoders above theirs rounded up first: taken from one
    # merely at its rounded-up share while another is above it, the joiner would end full
    # with that other one still a copy too many.
    passes = ((floor_share, ceil_share), (floor_share, floor_share), (ceil_share, ceil_share))
    for target, donor_limit in passes:
        for x in joiners:
            need = min(capacity[x], target[x]) - load[x]
            if need <= 0 or not any(load[j] > donor_limit[j] for j in range(len(load))):
                continue
            x_group = -ranking.group_scores(
                unit_hash, np.full(len(units), ranking.group[x], dtype=np.int64)
            )
            x_host = -ranking.host_scores(unit_hash, np.full(len(units), x, dtype=np.int64))
            for u in np.lexsort((units, x_host, x_group)).tolist():
                if need <= 0:
                    break
                copies = assigned[u]
                donors = [j for j in copies if load[j] > donor_limit[j]]
                if x in copies or not donors:
                    continue
                d = min(donors, key=above)
                if not zone_free(x, [j for j in copies if j != d]):
                    continue
                copies[copies.index(d)] = x
                load[d] -= 1
                load[x] += 1
                need -= 1
