"""The encoder's link to the Mesh Manager: a health-report stream and escalations.

Theory of operation
-------------------
The manager is never in the frame path: the encoder keeps encoding and syncing on its last
topology whatever happens to this link. :class:`ManagerLink` keeps one ``ReportHealth`` stream
open and writes a report every ``interval`` seconds, built at that moment by a callback from
the engine's snapshot and the link meters (:func:`meshenc.wire.convert.health_to_proto`). When
the stream fails (the manager restarts, a standby refuses it, the network drops) it reconnects
with the services' backoff (``services.common.retry``: between half and all of a ceiling that
doubles from ``backoff_base`` to ``backoff_cap`` seconds); a stream that ran for a while starts
the backoff afresh. The manager notices a dead encoder by its stream ending, so the stream is
opened as soon as the encoder runs and never closed while it does. A stream opened after the
certificate files were renewed goes out on a new channel that presents them.

Escalations (the engine's ``Escalate`` action: a proposal its neighbours did not approve) go
out as one ``Escalate`` call each (:func:`meshenc.wire.convert.escalation_to_proto`), with
the votes the proposer actually received (:class:`VoteLog` keeps them, bounded) and a deadline;
the manager's verdict comes back as the call's answer, or ``None`` when the manager cannot be
reached in time (the encoder then keeps its timeline, as it does on REJECT and DEFER).

Invariants: at most one report stream at a time; :meth:`ManagerLink.escalate` never raises for
a manager that is away; everything runs on the encoder's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import grpc

from meshenc.core.engine import Escalate
from meshenc.core.messages import CorrectionKind, ResyncVote
from meshenc.core.votes import Outcome
from meshenc.v1 import manager_pb2, manager_pb2_grpc
from services.common.grpc_server import open_channel
from services.common.retry import Backoff, retrying
from services.common.tls import MANAGER, TlsFiles, channel_credentials

__all__ = [
    "DEFAULT_REPORT_INTERVAL",
    "ManagerLink",
    "VoteLog",
]

log = logging.getLogger("meshenc.encoder.manager")

DEFAULT_REPORT_INTERVAL: Final = 1.0
"""Seconds between health reports."""
ESCALATION_TIMEOUT: Final = 2.0
"""Seconds an escalation may take before the encoder keeps its timeline without a verdict."""
_VOTE_LOG_PROPOSALS: Final = 32
"""Proposals whose votes :class:`VoteLog` keeps (one is open at a time, parameters aside)."""


class VoteLog:
    """The votes received on this encoder's recent proposals, so an escalation carries them.

    Bounded: only the newest ``proposals`` proposals' votes are kept.
    """

    def __init__(self, proposals: int = _VOTE_LOG_PROPOSALS) -> None:
        self._proposals = proposals
        self._votes: OrderedDict[int, dict[str, ResyncVote]] = OrderedDict()

    def record(self, vote: ResyncVote) -> None:
        """Keep ``vote`` (the first vote of a voter on a proposal counts, as in the book)."""
        votes = self._votes.setdefault(vote.proposal_id, {})
        self._votes.move_to_end(vote.proposal_id)
        votes.setdefault(vote.voter, vote)
        while len(self._votes) > self._proposals:
            self._votes.popitem(last=False)

    def account(self, outcome: Outcome) -> str:
        """How one of this encoder's proposals ended, for its log lines: a move's shift, and
        each rejection's reason and the voter's estimate of this encoder's error where its
        vote is kept: ``7 rejected (shift -33.3 ms; approvals ['e0'], rejections ['e1': no
        estimate, 'e2': moves away at +12.5 ms])`` (a parameter change has no shift). Why a
        vote said no is what tells a routine lock-in refusal (a voter still measuring) from a
        real disagreement, and the estimate against the shift tells whose view of the
        timeline differs."""
        proposal = outcome.proposal
        kept = self._votes.get(proposal.proposal_id, {})
        rejections = ", ".join(_rejection(v, kept.get(v)) for v in sorted(outcome.rejections))
        shift = (
            ""
            if proposal.kind is CorrectionKind.PARAMETER
            else f"shift {proposal.shift * 1000.0:+.1f} ms; "
        )
        return (
            f"{proposal.proposal_id} {outcome.verdict.name.lower()} "
            f"({shift}approvals {sorted(outcome.approvals)}, rejections [{rejections}])"
        )

    def take(self, action: Escalate) -> tuple[ResyncVote, ...]:
        """The counted votes of the escalated proposal (forgotten afterwards).

        A counted vote whose message is no longer kept is stated without its deviation.
        """
        proposal = action.outcome.proposal
        kept = self._votes.pop(proposal.proposal_id, {})
        votes = []
        for voter, approve in sorted(
            [(v, True) for v in action.outcome.approvals]
            + [(v, False) for v in action.outcome.rejections]
        ):
            vote = kept.get(voter)
            if vote is None or vote.approve != approve or vote.proposer != proposal.proposer:
                vote = ResyncVote(proposal.proposer, proposal.proposal_id, voter, approve, 0.0)
            votes.append(vote)
        return tuple(votes)


class _StreamEnded(Exception):  # noqa: N818 -- an outcome, not an error of this program
    """The report stream ended; reconnect after a backoff."""


class ManagerLink:
    """Keeps a ReportHealth stream to the manager and sends escalations.

    Args:
        address: the manager's ``host:port``.
        report: builds the next report (called every ``interval`` seconds).
        interval: seconds between reports.
        backoff_base: first reconnect delay ceiling, seconds; doubles per failed attempt.
        backoff_cap: largest reconnect delay, seconds.
        rng: source of the backoff jitter.
        tls: this encoder's TLS files (mutual TLS; the manager must present the
            :data:`~services.common.tls.MANAGER` identity); plaintext when None.
    """

    def __init__(
        self,
        address: str,
        report: Callable[[], manager_pb2.HealthReport],
        *,
        interval: float = DEFAULT_REPORT_INTERVAL,
        backoff_base: float = 0.1,
        backoff_cap: float = 2.0,
        rng: random.Random | None = None,
        tls: TlsFiles | None = None,
    ) -> None:
        self.address = address
        self._tls = tls
        self._report = report
        self._interval = interval
        self._backoff = Backoff(backoff_base, backoff_cap, jitter=0.0, spread=0.5)
        self._rng = rng if rng is not None else random.Random()
        self._channel: Any = None
        self._credentials: Any = None
        self._closing: set[asyncio.Task[None]] = set()
        #: Reports written, streams opened, and escalations answered by verdict name.
        self.reports_sent = 0
        self.streams = 0
        self.verdicts: dict[str, int] = {}

    def _stub(self) -> manager_pb2_grpc.MeshManagerStub:
        if self._channel is None:
            self._credentials = self._current_credentials()
            self._channel = open_channel(self.address, tls=self._tls, server_name=MANAGER)
        return manager_pb2_grpc.MeshManagerStub(self._channel)

    def _current_credentials(self) -> Any:
        return channel_credentials(self._tls) if self._tls is not None else None

    def _drop_stale_channel(self) -> None:
        """Before a new stream: a channel made before the certificate files were renewed is
        closed (an escalation on it gets its timeout to finish), so the next dial uses them."""
        channel = self._channel
        if channel is None or self._current_credentials() is self._credentials:
            return
        self._channel = None
        task = asyncio.get_running_loop().create_task(channel.close(grace=ESCALATION_TIMEOUT))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def run(self) -> None:
        """Keep the report stream open until cancelled."""
        while True:
            async for attempt in retrying(
                "health stream to the manager",
                lambda exc: isinstance(exc, _StreamEnded),
                attempts=None,
                backoff=self._backoff,
                rng=self._rng,
                logger=log,
                level=logging.INFO,
            ):
                with attempt:
                    await self._stream_once()

    async def _reports(self) -> AsyncIterator[manager_pb2.HealthReport]:
        while True:
            try:
                report = self._report()
            except Exception:
                log.exception("could not build a health report")
            else:
                self.reports_sent += 1
                yield report
            await asyncio.sleep(self._interval)

    async def _stream_once(self) -> None:
        started = time.monotonic()
        self._drop_stale_channel()
        call = self._stub().ReportHealth(self._reports())
        self.streams += 1
        try:
            await call
            why = "the manager closed it"
        except grpc.aio.AioRpcError as exc:
            why = f"{exc.code().name}: {exc.details()}"
        finally:
            call.cancel()
        lasted = time.monotonic() - started
        if lasted < self._backoff.maximum:
            raise _StreamEnded(why)
        log.info("health stream to the manager ended after %.1f s (%s); reconnecting", lasted, why)
        await asyncio.sleep(self._rng.uniform(0.0, self._backoff.initial))

    async def escalate(
        self, request: manager_pb2.Escalation, timeout: float = ESCALATION_TIMEOUT
    ) -> manager_pb2.EscalationAck | None:
        """Ask the manager to judge a proposal; None when it cannot answer in time."""
        try:
            ack: manager_pb2.EscalationAck = await self._stub().Escalate(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "escalation of proposal %d not answered (%s: %s); keeping the timeline",
                request.proposal.proposal_id,
                exc.code().name,
                exc.details(),
            )
            return None
        name = manager_pb2.EscalationVerdict.Name(ack.verdict)
        self.verdicts[name] = self.verdicts.get(name, 0) + 1
        return ack

    async def close(self) -> None:
        """Close the channel (cancel :meth:`run` first)."""
        channel, self._channel = self._channel, None
        if channel is not None:
            with contextlib.suppress(Exception):
                await channel.close()
        await asyncio.gather(*self._closing, return_exceptions=True)


def _rejection(voter: str, vote: ResyncVote | None) -> str:
    """One rejection in an account: the voter, and its reason and estimate where kept (an
    estimate of exactly 0.0 is a vote without one)."""
    if vote is None or not vote.reason:
        return repr(voter)
    if not vote.estimated_deviation:
        return f"{voter!r}: {vote.reason}"
    return f"{voter!r}: {vote.reason} at {vote.estimated_deviation * 1000.0:+.1f} ms"
