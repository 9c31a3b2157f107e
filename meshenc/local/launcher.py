"""Process supervision for embedded mode: meshenc services as children of one launcher.

Theory of operation
-------------------
A :class:`Launcher` starts ``python -m meshenc <command> ...`` children, each

- in a process group of its own, so a Ctrl-C in the terminal reaches only the launcher, which
  then stops the children in order (encoders first, so they finish their segment and resign,
  then the services they use) instead of every process dying at once;
- with its output appended to ``DIR/logs/<name>.log``;
- recorded in ``DIR/pids.json`` the moment it exists (name, pid, command), so a test or an
  operator can check afterwards that nothing the run started is still alive.

``start`` returns once the child's gRPC health service answers SERVING (``grpc.health.v1``,
the same check as ``meshenc health-check``), and raises :class:`ChildFailedError` with the end
of the child's log when it exits or does not become ready in time. ``stop`` sends SIGTERM to
any number of children at once, waits up to a grace period and SIGKILLs whoever is left;
``kill`` is the kill -9 of a fault-injection run, ``pause`` and ``resume`` its SIGSTOP and
SIGCONT (a frozen process: no FIN, no RST).

Every child is stopped when the ``async with`` block ends, however it ends (normally, an
exception, a cancellation). :meth:`Launcher.handle_signals` turns the first SIGINT, SIGTERM or
SIGHUP the launcher itself receives into an orderly stop and a second one into SIGKILL for
every child, and an ``atexit`` hook SIGKILLs what is left should the interpreter exit
without leaving the block. Only SIGKILL of the launcher itself can leave children behind.

Invariants: a name is running at most once; every pid the launcher created is in
``pids.json``; after ``async with`` ends no child is running.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from services.common.health_check import EXIT_SERVING, check_health
from services.common.tls import TlsFiles

__all__ = [
    "DEFAULT_GRACE",
    "DEFAULT_READY_TIMEOUT",
    "LOGS_DIR",
    "PIDS_NAME",
    "Child",
    "ChildFailedError",
    "Launcher",
    "meshenc_command",
    "pid_alive",
    "read_pids",
]

log = logging.getLogger("meshenc.launcher")


def meshenc_command(*args: str, python: str = sys.executable) -> list[str]:
    """The command line of ``meshenc ARGS`` run by ``python``.

    ``-P`` keeps the working folder off the module path: a process started from the source
    tree imports what ``PYTHONPATH`` names first (``build/compiled``, the compiled hot path)
    rather than the sources that happen to lie in the folder it was started from.
    """
    return [python, "-P", "-m", "meshenc", *args]


LOGS_DIR: Final = "logs"
PIDS_NAME: Final = "pids.json"
DEFAULT_GRACE: Final = 10.0
"""Seconds a child gets between SIGTERM and SIGKILL (an encoder finishes its segment)."""
DEFAULT_READY_TIMEOUT: Final = 30.0
"""Seconds a child gets to answer its health check (a busy 2-core machine is slow to import)."""
_POLL: Final = 0.05
_HEALTH_TIMEOUT: Final = 1.0
_HANDLED_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class ChildFailedError(RuntimeError):
    """A child exited or did not become ready; the message carries the end of its log."""


@dataclass(slots=True)
class Child:
    """One started process."""

    name: str
    process: subprocess.Popen[bytes]
    command: tuple[str, ...]
    address: str | None
    log_path: Path
    started_at: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.process.poll()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rpartition(")")[2].split()[0] != "Z"


class Launcher:
    """Starts, watches and stops the processes of one local run.

    Use as ``async with Launcher(run_dir) as launcher:`` inside the event loop of the run.

    Args:
        run_dir: the run's folder; logs go to ``run_dir/logs/``, pids to ``run_dir/pids.json``.
        grace: seconds between SIGTERM and SIGKILL in :meth:`stop`.
        ready_timeout: seconds a child gets to answer its health check in :meth:`start`.
        python: the interpreter that runs ``-m meshenc`` (this one by default).
        tls: the TLS files the readiness checks present (mutual TLS to the children);
            plaintext when None.
    """

    def __init__(
        self,
        run_dir: Path,
        *,
        grace: float = DEFAULT_GRACE,
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        python: str = sys.executable,
        tls: TlsFiles | None = None,
    ) -> None:
        if grace < 0 or ready_timeout <= 0:
            raise ValueError("grace must be >= 0 and ready_timeout > 0")
        self.run_dir = Path(run_dir)
        self.logs_dir = self.run_dir / LOGS_DIR
        self.pids_path = self.run_dir / PIDS_NAME
        self.grace = grace
        self.ready_timeout = ready_timeout
        self._python = python
        self._tls = tls
        self._children: dict[str, Child] = {}
        #: Every process this run created or adopted, in order: (name, pid, command).
        self._history: list[tuple[str, int, tuple[str, ...]]] = []
        self._signals_seen = 0
        self._atexit_registered = False

    # -- what runs ----------------------------------------------------------------------------

    @property
    def children(self) -> dict[str, Child]:
        """The latest process of every name (running or not)."""
        return dict(self._children)

    def running(self, name: str) -> bool:
        child = self._children.get(name)
        return child is not None and child.running

    def log_path(self, name: str) -> Path:
        return self.logs_dir / f"{name}.log"

    def log_tail(self, name: str, chars: int = 2000) -> str:
        path = self.log_path(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- starting -----------------------------------------------------------------------------

    def spawn(
        self, name: str, args: Sequence[str], *, address: str | None = None, held: bool = False
    ) -> Child:
        """Start ``python -m meshenc ARGS`` as ``name`` without waiting for it.

        ``held``: its stdin is a pipe that :meth:`release` writes a line to (for an encoder
        started with ``--standby``); otherwise it has none.

        Raises:
            RuntimeError: a process of that name is still running.
        """
        if self.running(name):
            raise RuntimeError(f"{name} is still running")
        self.logs_dir.mkdir(parents=True, exist_ok=True)
        command = tuple(meshenc_command(*args, python=self._python))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path(name).open("ab") as output:
            output.write(f"--- {time.strftime('%H:%M:%S')} {' '.join(command)}\n".encode())
            output.flush()
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if held else subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                process_group=0,
            )
        child = Child(name, process, command, address, self.log_path(name))
        self._children[name] = child
        self._remember(name, process.pid, command)
        log.debug("started %s (pid %d)", name, process.pid)
        return child

    async def release(self, name: str, *, service: str = "") -> Child:
        """Start a child spawned ``held``: write the line it waits for, close its stdin, then
        :meth:`wait_ready`; a child that fails to start is stopped.

        Raises:
            ValueError: it was not spawned held, or was released already.
            ChildFailedError: it exited (while it waited, or starting), or was not ready in time.
        """
        child = self._children[name]
        stdin = child.process.stdin
        if stdin is None or stdin.closed:
            raise ValueError(f"{name} is not held")
        with contextlib.suppress(BrokenPipeError):  # it exited: wait_ready says so
            stdin.write(b"\n")
        _close_stdin(child)
        return await self._ready_or_killed(name, service)

    def adopt(self, name: str, pid: int, command: Iterable[str] = ()) -> None:
        """Record a process started by someone else for this run (etcd) in ``pids.json``."""
        self._remember(name, pid, tuple(command))

    async def wait_ready(self, name: str, *, service: str = "") -> None:
        """Return once ``name``'s health service reports ``service`` SERVING.

        Raises:
            ChildFailedError: the child exited, or was not ready within ``ready_timeout``.
        """
        child = self._children[name]
        if child.address is None:
            raise ValueError(f"{name} has no address to check")
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if not child.running:
                raise ChildFailedError(
                    f"{name} exited with code {child.returncode} while starting; "
                    f"its log ({child.log_path}) ends:\n{self.log_tail(name)}"
                )
            status, _message = await asyncio.to_thread(
                check_health, child.address, service, _HEALTH_TIMEOUT, self._tls
            )
            if status == EXIT_SERVING:
                return
            if time.monotonic() > deadline:
                raise ChildFailedError(
                    f"{name} did not answer its health check at {child.address} within "
                    f"{self.ready_timeout:g} s; its log ({child.log_path}) ends:\n"
                    f"{self.log_tail(name)}"
                )
            await asyncio.sleep(0.2)

    async def start(
        self, name: str, args: Sequence[str], *, address: str, service: str = ""
    ) -> Child:
        """:meth:`spawn`, then :meth:`wait_ready`; a child that fails to start is stopped."""
        self.spawn(name, args, address=address)
        return await self._ready_or_killed(name, service)

    async def _ready_or_killed(self, name: str, service: str) -> Child:
        """:meth:`wait_ready`, killing the child if it raises."""
        try:
            await self.wait_ready(name, service=service)
        except BaseException:
            self.kill(name)
            raise
        return self._children[name]

    async def start_many(self, specs: Sequence[tuple[str, Sequence[str], str]]) -> list[Child]:
        """Start several children at once: ``(name, args, address)`` each; all ready or raise."""
        children = [self.spawn(name, args, address=address) for name, args, address in specs]
        try:
            await asyncio.gather(*(self.wait_ready(c.name) for c in children))
        except BaseException:
            for child in children:
                self.kill(child.name)
            raise
        return children

    # -- freezing -----------------------------------------------------------------------------

    def pause(self, name: str) -> None:
        """SIGSTOP ``name``'s process group: it stays alive, its sockets open, and says nothing."""
        child = self._children.get(name)
        if child is not None and child.running:
            _signal_group(child.process, signal.SIGSTOP)

    def resume(self, name: str) -> None:
        """SIGCONT ``name``'s process group (after :meth:`pause`)."""
        child = self._children.get(name)
        if child is not None and child.running:
            _signal_group(child.process, signal.SIGCONT)

    # -- stopping -----------------------------------------------------------------------------

    def kill(self, *names: str) -> None:
        """SIGKILL the named process groups and reap them: a crash, no goodbye. Every one is
        signalled before any is waited for, so several die at one moment, as in a machine
        that fails, and not one reaping after another (a second or more for twenty)."""
        children = [c for n in names if (c := self._children.get(n)) is not None and c.running]
        for child in children:
            _signal_group(child.process, signal.SIGKILL)
        for child in children:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=5.0)
            _close_stdin(child)

    async def stop(self, names: Iterable[str], *, grace: float | None = None) -> dict[str, int]:
        """SIGTERM every named child at once, wait up to ``grace`` s, SIGKILL the rest.

        Returns:
            Exit codes by name (negative: killed by that signal), for the names that ran.
        """
        grace = self.grace if grace is None else grace
        children = [self._children[n] for n in names if n in self._children]
        for child in children:
            _close_stdin(child)  # a held child that was never released: its stdin ends
            if child.running:
                _signal_group(child.process, signal.SIGTERM)
                # A paused child would hold the SIGTERM until the grace is over.
                _signal_group(child.process, signal.SIGCONT)
        deadline = time.monotonic() + grace
        while any(c.running for c in children) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL)
        for child in children:
            if child.running:
                log.warning(
                    "%s did not stop within %.0f s of SIGTERM: killing it", child.name, grace
                )
                self.kill(child.name)
        return {c.name: c.process.wait() for c in children}

    async def stop_all(self, *, grace: float | None = None) -> dict[str, int]:
        """Stop every running child, all at once."""
        return await self.stop([n for n in self._children if self.running(n)], grace=grace)

    def kill_all(self) -> None:
        """SIGKILL every running child (the last resort: a second Ctrl-C, interpreter exit)."""
        self.kill(*self._children)

    # -- signals ------------------------------------------------------------------------------

    def handle_signals(self, orderly_stop: Callable[[], None]) -> None:
        """The first SIGINT/SIGTERM/SIGHUP calls ``orderly_stop``; the next kills every child
        and cancels the task that called this. Call inside the running event loop."""
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()

        def received(sig: signal.Signals) -> None:
            self._signals_seen += 1
            if self._signals_seen == 1:
                log.warning("%s: stopping the run (again to stop at once)", sig.name)
                orderly_stop()
                return
            log.warning("%s again: killing every process of the run", sig.name)
            self.kill_all()
            if task is not None:
                task.cancel()

        for sig in _HANDLED_SIGNALS:
            loop.add_signal_handler(sig, received, sig)

    def restore_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in _HANDLED_SIGNALS:
            loop.remove_signal_handler(sig)

    # -- context manager ----------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._write_pids()
        atexit.register(self.kill_all)
        self._atexit_registered = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await asyncio.shield(self.stop_all())
        except BaseException:
            self.kill_all()
            raise
        finally:
            self.kill_all()
            if self._atexit_registered:
                atexit.unregister(self.kill_all)
                self._atexit_registered = False

    # -- pids.json ----------------------------------------------------------------------------

    def _remember(self, name: str, pid: int, command: tuple[str, ...]) -> None:
        self._history.append((name, pid, command))
        self._write_pids()

    def _write_pids(self) -> None:
        document = {
            "launcher": os.getpid(),
            "processes": [
                {"name": name, "pid": pid, "command": list(command)}
                for name, pid, command in self._history
            ],
        }
        self.run_dir.mkdir(parents=True, exist_ok=True)
        temporary = self.pids_path.with_suffix(".json.tmp")
        with temporary.open("w", encoding="utf-8") as out:
            json.dump(document, out, indent=1)
        temporary.replace(self.pids_path)


def _close_stdin(child: Child) -> None:
    """Close the pipe to a held child's stdin, if it has one still open."""
    if child.process.stdin is not None and not child.process.stdin.closed:
        with contextlib.suppress(BrokenPipeError):
            child.process.stdin.close()


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal the child's process group (its pid: it leads its own group)."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:  # the group is gone and the id reused: signal the child alone
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)


def read_pids(run_dir: Path) -> list[tuple[str, int]]:
    """(name, pid) of every process a run's launcher recorded, in order."""
    document = json.loads((Path(run_dir) / PIDS_NAME).read_text(encoding="utf-8"))
    return [(str(p["name"]), int(p["pid"])) for p in document["processes"]]
