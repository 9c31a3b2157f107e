"""Segment leadership on a real etcd (the Debian binary, started by ``EtcdProcess``).

Nothing is mocked. The end-to-end test runs three real encoder processes (``meshenc
encoder``) in one segment, kills the leader with SIGKILL, stops and restarts etcd under them,
and finally audits the whole etcd history of the segment's keys. The shorter tests run the
leadership shell alone in the test process against the same real etcd, where they need to
write hostile values next to it or to watch it from inside. Each test starts and stops its own
processes (fixtures with try/finally) and bounds every wait.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from pydantic import ValidationError

from meshenc.core.election import RankInputs, Role
from meshenc.local.etcd import EtcdNotInstalledError, EtcdProcess
from meshenc.local.segment import LocalSegment, SegmentWatch
from services.encoder.leadership import Leadership, SegmentKeys, connect_client
from services.encoder.leadership_audit import HistoryEvent, audit, read_history
from services.encoder.settings import EtcdSettings, parse_endpoints

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
    """Run ``coro`` on a fresh event loop, failing the test after ``timeout`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0) -> None:
    """Wait until ``check()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if await outcome if isinstance(outcome, Awaitable) else outcome:
            return
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


# -- the whole story with real encoder processes ---------------------------------------------


@pytest.mark.slow
def test_kill_leader_and_restart_etcd_keep_one_leader(etcd: EtcdProcess, tmp_path: Path) -> None:
    """kill -9 of the leader → the survivors suspect it and another leader acts; etcd down →
    encoders keep going, degraded, with the last leader; etcd back → one leader again; the
    history shows no overlap."""
    segment = LocalSegment(etcd.endpoint, 3, tmp_path / "mesh", segment="s1")
    keys = SegmentKeys("/meshenc", "s1")
    settings = EtcdSettings(endpoints=(etcd.endpoint,))
    killed: list[int] = []  # the victim's fencing token

    async def story() -> None:
        client = connect_client(settings)
        watch = SegmentWatch(keys)
        follower = asyncio.create_task(watch.follow(client, 1))
        try:
            await eventually(segment.settled, 40.0)
            victim = watch.leader
            assert victim in segment.names
            killed.append(watch.token)
            killed_at = time.monotonic()
            segment.kill(victim)
            acted = await watch.first_act_after(killed_at, not_by=victim, timeout=20.0)
            assert acted is not None, "no other member acted as leader after the kill"
            assert watch.leader not in (None, victim)
            segment.start(victim)
            await eventually(segment.settled, 40.0)
        finally:
            follower.cancel()
            with contextlib.suppress(BaseException):
                await follower
            await client.close()

        before = await segment.states()
        leader = {s.leader_id for s in before.values()}
        etcd.stop()
        await asyncio.sleep(1.5)
        during = await segment.states()
        assert set(during) == set(segment.names), "an encoder stopped answering without etcd"
        assert all(s.coordination_degraded for s in during.values())
        assert {s.leader_id for s in during.values()} == leader, "the last leader was forgotten"
        await asyncio.sleep(1.0)
        later = await segment.states()
        assert all(later[n].timecode > during[n].timecode for n in segment.names), (
            "encoding stalled while etcd was away"
        )
        etcd.start()
        await eventually(segment.settled, 30.0)

    try:
        segment.start_all()
        run(story(), timeout=150.0)
        assert all(segment.running(n) for n in segment.names)
    finally:
        codes = segment.stop_all()
    assert set(codes.values()) == {0}, {n: segment.log_tail(n) for n in segment.names}

    async def history() -> list[HistoryEvent]:
        client = connect_client(settings)
        try:
            return await read_history(client, keys)
        finally:
            await client.close()

    events = run(history())
    report = audit(events, keys)
    assert report.ok, report
    assert report.malformed == 0
    acting = {t.holder for t in report.tenures if t.acts}
    assert len(acting) >= 2, f"only {acting} ever acted: the leadership never moved"
    # The mesh noticed the death: both survivors suspected the victim's tenure, and the next
    # tenure began with the takeover that cleared those suspicions.
    (token,) = killed
    suspects = keys.suspects_of(token)
    voters = {e.key for e in events if e.key.startswith(suspects) and not e.deleted}
    assert len(voters) == 2, voters
    successor = next(t for t in report.tenures if t.token > token)
    cleared = {e.revision for e in events if e.key.startswith(suspects) and e.deleted}
    assert successor.token in cleared


# -- the shell alone, in this process ---------------------------------------------------------


def _members(
    etcd: EtcdProcess, names: str, **config: Any
) -> tuple[EtcdSettings, dict[str, Leadership]]:
    settings = EtcdSettings(endpoints=(etcd.endpoint,), lease_ttl=2, **config)
    members = {n: Leadership(n, "s2", settings) for n in names}
    for i, (name, member) in enumerate(members.items()):
        others = frozenset(members) - {name}
        member.report(RankInputs(confidence=0.4 + 0.2 * i, latency=0.001, neighbours=others))
    return settings, members


async def _close_all(members: dict[str, Leadership], tasks: list[asyncio.Task[None]]) -> None:
    for member in members.values():
        await member.close()
    await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 10.0)


def test_hostile_values_in_etcd_are_ignored_and_the_election_goes_on(
    etcd: EtcdProcess,
) -> None:
    """Garbage under the segment's keys (a broken or hostile writer) is logged and skipped."""
    settings, members = _members(etcd, "ab")
    keys = SegmentKeys(settings.prefix, "s2")

    async def scenario() -> None:
        client = connect_client(settings)
        await client.put(keys.candidate("x"), b"{not json")
        await client.put(keys.candidate("y"), b'{"confidence": 7, "latency": -1}')
        await client.put(keys.candidate("z"), b'{"confidence": NaN, "latency": 0}')
        await client.put(keys.suspects + b"notanumber/x", b"")
        await client.put(keys.acts, b"\xff\xfe")
        tasks = [asyncio.create_task(m.run()) for m in members.values()]
        try:
            await eventually(lambda: all(m.leader == "b" for m in members.values()))
            # Hostile values arriving while it runs are skipped just the same.
            await client.put(keys.candidate("w"), b"[]")
            await client.put(keys.acts, b'{"holder": "", "token": -3, "seq": 0}')
            await asyncio.sleep(0.3)
            assert {m.leader for m in members.values()} == {"b"}
            assert members["b"].role is Role.LEADER
            assert sorted(members["a"].snapshot().candidates) == ["a", "b"]
            assert members["b"].acts_written > 0
        finally:
            await _close_all(members, tasks)
            await client.close()

    run(scenario())


def test_a_member_the_mesh_lost_is_replaced_by_majority_and_fenced(etcd: EtcdProcess) -> None:
    """The leader's process is alive but the mesh lost it: the others take over, and its
    acts with the old token no longer land (its guard fails), so it steps down."""
    settings, members = _members(etcd, "abc")
    keys = SegmentKeys(settings.prefix, "s2")

    async def scenario() -> None:
        tasks = [asyncio.create_task(m.run()) for m in members.values()]
        try:
            await eventually(lambda: all(m.leader == "c" for m in members.values()))
            old_token = members["c"].token
            for name in "ab":
                members[name].peer_lost("c")
            await eventually(lambda: members["a"].leader == "b" and members["b"].token > old_token)
            # c's lease was revoked by the takeover: it learns it lost, stops acting, and
            # runs again as an ordinary candidate with a new lease.
            await eventually(lambda: members["c"].role is Role.FOLLOWER)
            assert not members["c"].admits(old_token)
            for name in "ab":
                members[name].peer_recovered("c")
            await asyncio.sleep(0.5)
        finally:
            await _close_all(members, tasks)
        client = connect_client(settings)
        try:
            report = audit(await read_history(client, keys), keys)
        finally:
            await client.close()
        assert report.ok, report
        holders = [t.holder for t in report.tenures]
        assert "b" in holders[holders.index("c") :], holders

    run(scenario())


def test_no_takeover_without_a_majority(etcd: EtcdProcess) -> None:
    """One member alone losing the leader (a broken link, not a death) changes nothing."""
    _settings, members = _members(etcd, "abc")

    async def scenario() -> None:
        tasks = [asyncio.create_task(m.run()) for m in members.values()]
        try:
            await eventually(lambda: all(m.leader == "c" for m in members.values()))
            token = members["c"].token
            members["a"].peer_lost("c")
            await asyncio.sleep(1.0)
            assert {(m.leader, m.token) for m in members.values()} == {("c", token)}
        finally:
            await _close_all(members, tasks)

    run(scenario())


def test_a_leader_that_shuts_down_resigns_at_once(etcd: EtcdProcess) -> None:
    """No lease expiry to wait for: the next leader is there well within the 2 s TTL."""
    _settings, members = _members(etcd, "ab")

    async def scenario() -> None:
        tasks = [asyncio.create_task(m.run()) for m in members.values()]
        try:
            await eventually(lambda: all(m.leader == "b" for m in members.values()))
            await members["b"].close()
            closed_at = time.monotonic()
            await eventually(lambda: members["a"].leader == "a", timeout=5.0)
            waited = time.monotonic() - closed_at
            print(f"new leader {waited * 1000:.0f} ms after the resignation")
            assert members["a"].role is Role.LEADER
        finally:
            await _close_all(members, tasks)

    run(scenario())


def test_a_session_that_closes_its_client_during_the_resignation_does_not_break_close(
    etcd: EtcdProcess,
) -> None:
    """The session can end while a member resigns (its own write racing the revoke finds the
    lease gone) and close the client under the revoke; gRPC reports a cancellation, which
    close() must not pass on as if the caller had been cancelled."""
    _settings, members = _members(etcd, "a")
    member = members["a"]

    async def scenario() -> None:
        task = asyncio.create_task(member.run())
        try:
            await eventually(lambda: member.leader == "a")
            client = member._client
            assert client is not None
            revoke = client.revoke_lease

            async def revoke_while_the_session_closes(lease: int) -> Any:
                call = asyncio.create_task(revoke(lease))
                await asyncio.sleep(0)
                await client.close()
                return await call

            client.revoke_lease = revoke_while_the_session_closes
            await member.close()
            await asyncio.wait_for(task, 10.0)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    run(scenario())


def test_each_region_elects_its_own_leader_of_a_segment(etcd: EtcdProcess) -> None:
    """Four members of one segment in two regions: two leaders at once, one per region, each
    under its region's keys; the leader of one region leaving is replaced from its own region
    and the other region's leader stays."""
    settings = EtcdSettings(endpoints=(etcd.endpoint,), lease_ttl=2)
    regions = {"a": "eu", "b": "eu", "c": "us", "d": "us"}
    members = {n: Leadership(n, "s2", settings, region=r) for n, r in regions.items()}
    for i, (name, member) in enumerate(members.items()):
        same = frozenset(n for n in regions if regions[n] == regions[name] and n != name)
        member.report(RankInputs(confidence=0.4 + 0.2 * i, latency=0.001, neighbours=same))

    async def scenario() -> None:
        client = connect_client(settings)
        tasks = [asyncio.create_task(m.run()) for m in members.values()]
        try:
            await eventually(lambda: [m.leader for m in members.values()] == ["b", "b", "d", "d"])
            assert members["b"].role is Role.LEADER and members["d"].role is Role.LEADER
            for region, leader in (("eu", "b"), ("us", "d")):
                value = await client.get(SegmentKeys(settings.prefix, "s2", region).leader)
                assert value is not None and f'"holder":"{leader}"'.encode() in value.value
            assert await client.get(SegmentKeys(settings.prefix, "s2").leader) is None
            await members["b"].close()
            await eventually(lambda: members["a"].leader == "a", timeout=5.0)
            assert members["d"].leader == "d" and members["c"].leader == "d"
        finally:
            await _close_all(members, tasks)
            await client.close()

    run(scenario())


# -- the pieces -------------------------------------------------------------------------------


def test_the_audit_finds_a_deposed_leader_acting() -> None:
    """The audit must be able to fail: a leader acting after it was replaced is caught."""
    keys = SegmentKeys("/meshenc", "s")
    leader = keys.leader

    def act(revision: int, holder: str, token: int) -> HistoryEvent:
        value = f'{{"holder":"{holder}","token":{token},"seq":{revision}}}'.encode()
        return HistoryEvent(revision, keys.acts, False, value)

    history = [
        HistoryEvent(10, leader, False, b'{"holder":"a","lease":1}'),
        act(11, "a", 10),
        HistoryEvent(12, leader, False, b'{"holder":"b","lease":2}'),
        act(13, "b", 12),
        act(14, "a", 10),  # unfenced: a did not notice and acted anyway
        act(15, "b", 12),
    ]
    report = audit(history, keys)
    assert report.acts_outside_tenure == 1
    assert report.dual_leader_intervals == 1
    assert [(t.holder, t.token, t.end) for t in report.tenures] == [
        ("a", 10, 12),
        ("b", 12, None),
    ]
    fenced = audit([e for e in history if e.revision != 14], keys)
    assert fenced.ok


def test_etcd_restart_keeps_the_data(etcd: EtcdProcess) -> None:
    settings = EtcdSettings(endpoints=(etcd.endpoint,))

    async def put() -> int:
        client = connect_client(settings)
        try:
            return int((await client.put(b"/meshenc/probe", b"1")).header.revision)
        finally:
            await client.close()

    async def get() -> bytes | None:
        client = connect_client(settings)
        try:
            found = await client.get(b"/meshenc/probe")
            return None if found is None else bytes(found.value)
        finally:
            await client.close()

    run(put())
    pid = etcd.pid
    etcd.restart()
    assert etcd.pid != pid
    assert run(get()) == b"1"


def test_a_missing_etcd_binary_says_what_to_install() -> None:
    with pytest.raises(EtcdNotInstalledError, match="etcd-server"):
        EtcdProcess(binary="etcd-that-is-not-installed")


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"endpoints": ("127.0.0.1:2379",)}, "http"),
        ({"endpoints": ()}, "at least 1"),
        ({"endpoints": ("http://h:1",), "prefix": "meshenc/"}, "prefix"),
        ({"endpoints": ("http://h:1",), "user": "u"}, "together"),
        ({"endpoints": ("http://h:1",), "cert": Path(__file__)}, "together"),
        ({"endpoints": ("http://h:1",), "ca": Path("/no/such/ca.pem")}, "does not exist"),
        ({"endpoints": ("http://h:1",), "lease_ttl": 0}, "lease_ttl"),
    ],
)
def test_bad_etcd_settings_are_refused(fields: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        EtcdSettings(**fields)


def test_etcd_endpoints_parse_and_bad_ones_are_named() -> None:
    assert parse_endpoints(" http://10.0.0.5:2379, https://[::1]:2379 ,") == (
        "http://10.0.0.5:2379",
        "https://[::1]:2379",
    )
    assert parse_endpoints("") == ()
    for bad in ("etcd.example:2379", "http://h", "ftp://h:1", "http://h:99999"):
        with pytest.raises(ValueError, match=re.escape(repr(bad))):
            parse_endpoints(bad)


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and one certificate for 127.0.0.1 (server and client), by openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs the openssl command to make test certificates")
    ca, ca_key = folder / "ca.pem", folder / "ca.key"
    cert, key, csr = folder / "node.pem", folder / "node.key", folder / "node.csr"
    extensions = folder / "ext.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    for command in (
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "1",
         "-subj", "/CN=meshenc test CA"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial",
         "-out", cert, "-days", "1", "-extfile", extensions],
    ):  # fmt: skip
        subprocess.run([str(part) for part in command], check=True, capture_output=True)
    return ca, cert, key


def test_the_election_runs_over_tls_with_client_certificates(tmp_path: Path) -> None:
    ca, cert, key = _certificates(tmp_path)
    process = EtcdProcess(log_path=tmp_path / "etcd.log", tls=(ca, cert, key))
    try:
        process.start()
        assert process.endpoint.startswith("https://")
        settings = EtcdSettings(endpoints=(process.endpoint,), ca=ca, cert=cert, key=key)
        member = Leadership("a", "tls", settings)
        member.report(RankInputs(confidence=0.9, latency=0.001))

        async def scenario() -> None:
            task = asyncio.create_task(member.run())
            try:
                await eventually(lambda: member.role is Role.LEADER)
                await eventually(lambda: member.acts_written > 0)
            finally:
                await member.close()
                await asyncio.wait_for(task, 10.0)

        run(scenario())
    finally:
        process.close()
