"""The launcher against real children: ``meshenc registry`` nodes (a gRPC server that starts
in about a second), health checks over 127.0.0.1, signals to whole process groups."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from meshenc.local.launcher import (
    ChildFailedError,
    Launcher,
    meshenc_command,
    pid_alive,
    read_pids,
)
from meshenc.local.ports import free_ports
from services.common.health_check import EXIT_SERVING, check_health

pytestmark = pytest.mark.slow


def _registry(port: int) -> list[str]:
    return ["registry", "--insecure", "--listen", f"127.0.0.1:{port}"]


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def _state(pid: int, want: str = "T", timeout: float = 2.0) -> str:
    """The process's state letter in ``/proc`` (``T``: stopped by a signal), once it is
    ``want`` or ``timeout`` s have passed (a signal takes effect when it is delivered)."""
    deadline = time.monotonic() + timeout
    while True:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        if state == want or time.monotonic() > deadline:
            return state
        time.sleep(0.01)


def test_kill_of_several_crashes_each_of_them_and_leaves_the_rest(tmp_path: Path) -> None:
    """``kill`` with several names (an overload trial's relief, the last resort of a second
    Ctrl-C) SIGKILLs and reaps every one of them; a child not named keeps serving."""
    ports = free_ports(3)

    async def scenario() -> tuple[dict[str, int | None], int]:
        async with Launcher(tmp_path) as launcher:
            await launcher.start_many(
                [(f"r{i}", _registry(p), f"127.0.0.1:{p}") for i, p in enumerate(ports)]
            )
            launcher.kill("r0", "r2")
            codes = {n: c.process.returncode for n, c in launcher.children.items()}
            status, _ = await asyncio.to_thread(check_health, f"127.0.0.1:{ports[1]}", "", 5.0)
            return codes, status

    codes, status = asyncio.run(scenario())
    assert codes == {"r0": -signal.SIGKILL, "r1": None, "r2": -signal.SIGKILL}
    assert status == EXIT_SERVING


def test_start_waits_until_serving_pause_resume_and_kill_is_a_crash(tmp_path: Path) -> None:
    first, second = free_ports(2)

    async def scenario() -> tuple[int, int, int | None, dict[str, int]]:
        async with Launcher(tmp_path) as launcher:
            await launcher.start_many(
                [
                    ("r0", _registry(first), f"127.0.0.1:{first}"),
                    ("r1", _registry(second), f"127.0.0.1:{second}"),
                ]
            )
            # Ready means serving, as an independent health check sees it.
            status, message = await asyncio.to_thread(check_health, f"127.0.0.1:{first}", "", 2.0)
            assert status == EXIT_SERVING, message
            killed = launcher.children["r0"]
            launcher.kill("r0")
            # Frozen: alive, its socket open, and no answer; resumed: serving again.
            frozen = launcher.children["r1"]
            launcher.pause("r1")
            assert _state(frozen.pid) == "T"
            status, _ = await asyncio.to_thread(check_health, f"127.0.0.1:{second}", "", 1.0)
            assert status != EXIT_SERVING
            launcher.resume("r1")
            status, message = await asyncio.to_thread(check_health, f"127.0.0.1:{second}", "", 5.0)
            assert status == EXIT_SERVING, message
            # A child stopped while frozen still stops cleanly (SIGTERM, then SIGCONT).
            launcher.pause("r1")
            codes = await launcher.stop(["r1"])
            return killed.pid, launcher.children["r1"].pid, killed.returncode, codes

    killed_pid, stopped_pid, killed_code, codes = asyncio.run(scenario())
    assert killed_code == -signal.SIGKILL
    assert codes == {"r1": 0}, "SIGTERM should stop a registry node cleanly"
    assert [pid for _name, pid in read_pids(tmp_path)] == [killed_pid, stopped_pid]
    assert not _wait_gone([killed_pid, stopped_pid])
    assert "registry" in (tmp_path / "logs" / "r1.log").read_text()


def test_a_child_that_cannot_start_is_reported_with_its_log(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Launcher(tmp_path, ready_timeout=20.0) as launcher:
            await launcher.start(
                "bad", ["registry", "--insecure", "--listen", "nowhere"], address="127.0.0.1:1"
            )

    with pytest.raises(ChildFailedError) as failure:
        asyncio.run(scenario())
    assert "exited with code 2" in str(failure.value)
    assert "HOST:PORT" in str(failure.value), "the log's usage error should be quoted"
    assert not _wait_gone([pid for _name, pid in read_pids(tmp_path)])


def test_a_child_that_never_answers_is_stopped(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    (elsewhere,) = free_ports(1)

    async def scenario() -> None:
        async with Launcher(tmp_path, ready_timeout=3.0) as launcher:
            # It serves, but on another port than the one checked.
            await launcher.start("r", _registry(port), address=f"127.0.0.1:{elsewhere}")

    with pytest.raises(ChildFailedError, match="did not answer its health check"):
        asyncio.run(scenario())
    assert not _wait_gone([pid for _name, pid in read_pids(tmp_path)])


_SUPERVISOR = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from meshenc.local.launcher import Launcher

    async def main(folder: Path, port: int) -> None:
        stop = asyncio.Event()
        async with Launcher(folder) as launcher:
            launcher.handle_signals(stop.set)
            address = f"127.0.0.1:{port}"
            command = ["registry", "--insecure", "--listen", address]
            await launcher.start("r", command, address=address)
            (folder / "ready").write_text("")
            await stop.wait()

    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    """
)


def test_sigterm_to_the_launcher_stops_its_children(tmp_path: Path) -> None:
    """SIGTERM (``meshenc up``'s SIGINT is tested with the whole run in test_up.py)."""
    (port,) = free_ports(1)
    supervisor = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, str(tmp_path), str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30.0
        while not (tmp_path / "ready").exists():
            assert supervisor.poll() is None, supervisor.communicate()[0].decode()
            assert time.monotonic() < deadline, "the launcher did not start its child"
            time.sleep(0.05)
        (child,) = [pid for _name, pid in read_pids(tmp_path)]
        assert pid_alive(child)
        # The child leads a process group of its own: a signal to the launcher's group (a
        # terminal's Ctrl-C, a service manager's stop) does not reach it; the launcher stops it.
        assert os.getpgid(child) == child != os.getpgid(supervisor.pid)
        os.killpg(supervisor.pid, signal.SIGTERM)
        output = supervisor.communicate(timeout=20.0)[0].decode()
        assert supervisor.returncode == 0, output
        assert not _wait_gone([child]), "the child outlived its launcher"
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
        for _name, pid in read_pids(tmp_path) if (tmp_path / "pids.json").exists() else []:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


def _standby_encoder(port: int, out: Path) -> list[str]:
    """A lone encoder of the test pattern, ``--standby``: it loads, then waits for its start."""
    return ["encoder", "--insecure", "--id", "e0", "--listen", f"127.0.0.1:{port}",
            "--out", str(out), "--standby"]  # fmt: skip


async def _until_in_log(launcher: Launcher, name: str, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in launcher.log_tail(name) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert text in launcher.log_tail(name), launcher.log_tail(name)


def test_a_held_encoder_serves_only_once_released(tmp_path: Path) -> None:
    """``meshenc up``'s joiner: loaded at the run's start, started at its join."""
    port = free_ports(1)[0]
    out = tmp_path / "e0"

    async def scenario() -> tuple[int, int, dict[str, int]]:
        async with Launcher(tmp_path) as launcher:
            launcher.spawn("e0", _standby_encoder(port, out), address=f"127.0.0.1:{port}",
                           held=True)  # fmt: skip
            await _until_in_log(launcher, "e0", "standing by")
            held, _ = await asyncio.to_thread(check_health, f"127.0.0.1:{port}", "", 1.0)
            assert launcher.running("e0") and not out.exists()
            await launcher.release("e0")
            serving, _ = await asyncio.to_thread(check_health, f"127.0.0.1:{port}", "", 5.0)
            with pytest.raises(ValueError, match="not held"):
                await launcher.release("e0")
            return held, serving, await launcher.stop(["e0"])

    held, serving, codes = asyncio.run(scenario())
    assert held != EXIT_SERVING and serving == EXIT_SERVING
    assert codes == {"e0": 0}
    assert out.is_dir()


def test_a_held_encoder_never_released_stops_without_starting(tmp_path: Path) -> None:
    port = free_ports(1)[0]
    out = tmp_path / "e0"

    async def scenario() -> dict[str, int]:
        async with Launcher(tmp_path) as launcher:
            launcher.spawn("e0", _standby_encoder(port, out), address=f"127.0.0.1:{port}",
                           held=True)  # fmt: skip
            await _until_in_log(launcher, "e0", "standing by")
            return await launcher.stop_all()

    assert asyncio.run(scenario()) == {"e0": 0}  # its stdin ended: it did not wait for SIGTERM
    assert "not started" in (tmp_path / "logs" / "e0.log").read_text()
    assert not out.exists()


def test_a_sigterm_after_a_standby_encoders_stdin_ended_does_not_kill_it(tmp_path: Path) -> None:
    """The launcher's stop closes stdin and sends SIGTERM; when the encoder has read the end
    of stdin first, the SIGTERM lands while it exits and must not turn its 0 into -15."""
    port = free_ports(1)[0]
    with subprocess.Popen(
        meshenc_command(*_standby_encoder(port, tmp_path / "e0")),
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as child:
        try:
            assert child.stdin is not None and child.stderr is not None
            said = b""
            for awaited, then in ((b"standing by", child.stdin.close), (b"not started", None)):
                while awaited not in said:
                    line = child.stderr.readline()
                    assert line, said.decode()
                    said += line
                if then is not None:
                    then()
            child.send_signal(signal.SIGTERM)  # the process is on its way out, not gone
            assert child.wait(timeout=30.0) == 0, said.decode()
        finally:
            if child.poll() is None:
                child.kill()


def test_a_child_imports_what_pythonpath_names_not_the_folder_it_starts_in(
    tmp_path: Path,
) -> None:
    # PYTHONPATH=build/compiled must reach the children even when started from the source
    # tree, whose own meshenc folder `python -m` would put first.
    for folder, says in (("here", "the working folder"), ("named", "PYTHONPATH")):
        package = tmp_path / folder / "meshenc"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "__main__.py").write_text(f"print({says!r})\n")
    done = subprocess.run(
        meshenc_command("--version"),
        cwd=tmp_path / "here",
        env={**os.environ, "PYTHONPATH": str(tmp_path / "named")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == "PYTHONPATH"
