"""The real etcd server as a local process: free loopback ports, a private data folder.

Used by the tests, the failover benchmark and embedded mode. ``stop`` (SIGTERM), ``kill``
(SIGKILL) and ``restart`` keep the data folder and the ports, so a restarted etcd is the same
one-member cluster with the same keys, leases and revisions, as after an outage.
"""

from __future__ import annotations

import json
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Self

from meshenc.local.ports import free_ports
from meshenc.local.process import ManagedProcess

__all__ = ["EtcdNotInstalledError", "EtcdProcess"]


class EtcdNotInstalledError(RuntimeError):
    """The ``etcd`` binary is not on PATH."""


class EtcdProcess(ManagedProcess):
    """One single-member etcd cluster on 127.0.0.1.

    Args:
        binary: the etcd executable (looked up on PATH).
        data_dir: where etcd keeps its data; a temporary folder (removed by :meth:`close`)
            when None.
        log_path: etcd's output goes here (appended across restarts); discarded when None.
        start_timeout: seconds to wait for etcd to report itself healthy.
        tls: (CA, certificate, key) files: serve clients over TLS and require client
            certificates signed by that CA (the same pair then serves as the client's).
    """

    def __init__(
        self,
        *,
        binary: str = "etcd",
        data_dir: Path | None = None,
        log_path: Path | None = None,
        start_timeout: float = 20.0,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        found = shutil.which(binary)
        if found is None:
            raise EtcdNotInstalledError(
                f"{binary!r} is not installed or not on PATH; on Debian/Ubuntu install the "
                "etcd-server package (`make system-deps` does)"
            )
        self._binary = found
        self._own_dir = data_dir is None
        self._parent = Path(tempfile.mkdtemp(prefix="meshenc-etcd-")) if data_dir is None else None
        self.data_dir = data_dir if data_dir is not None else self._parent_dir() / "data"
        self._log_path = log_path
        self._log: IO[bytes] | None = None
        self._start_timeout = start_timeout
        self.tls = tls
        self.client_port, self.peer_port = free_ports(2)
        self._process: subprocess.Popen[bytes] | None = None

    def _parent_dir(self) -> Path:
        assert self._parent is not None
        return self._parent

    @property
    def endpoint(self) -> str:
        """The client URL, ``http://127.0.0.1:PORT`` (``https`` with TLS)."""
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _command(self) -> list[str]:
        client = self.endpoint
        peer = f"http://127.0.0.1:{self.peer_port}"
        tls: list[str] = []
        if self.tls is not None:
            ca, cert, key = self.tls
            tls = [
                "--cert-file", str(cert),
                "--key-file", str(key),
                "--trusted-ca-file", str(ca),
                "--client-cert-auth",
            ]  # fmt: skip
        return [
            self._binary,
            "--name", "meshenc",
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"meshenc={peer}",
            "--initial-cluster-state", "new",
            "--log-level", "warn",
            "--logger", "zap",
            *tls,
        ]  # fmt: skip

    def start(self) -> Self:
        """Start etcd and return once it answers its health check.

        Raises:
            RuntimeError: etcd exited or did not become healthy in time (its log is named).
        """
        if self.running:
            return self
        if self._log is None and self._log_path is not None:
            self._log = self._log_path.open("ab")
        output: IO[bytes] | int = self._log if self._log is not None else subprocess.DEVNULL
        # Its own process group: a Ctrl-C in the terminal must not stop etcd before the
        # encoders that depend on it have resigned; whoever started it stops it.
        self._process = subprocess.Popen(
            self._command(), stdout=output, stderr=output, process_group=0
        )
        deadline = time.monotonic() + self._start_timeout
        while not self._healthy():
            code = self._process.poll()
            if code is not None:
                self._process = None
                raise RuntimeError(f"etcd exited with code {code} at start (log: {self._log_path})")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"etcd did not become healthy within {self._start_timeout} s "
                    f"(log: {self._log_path})"
                )
            time.sleep(0.05)
        return self

    def _healthy(self) -> bool:
        context = None
        if self.tls is not None:
            ca, cert, key = self.tls
            context = ssl.create_default_context(cafile=str(ca))
            context.load_cert_chain(str(cert), str(key))
        try:
            with urllib.request.urlopen(
                f"{self.endpoint}/health", timeout=1.0, context=context
            ) as answer:
                return bool(json.load(answer).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL after ``timeout`` seconds)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL and wait, as a crash."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: signal.Signals, timeout: float) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> Self:
        """Stop (if running) and start again with the same data folder and ports."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop etcd, close its log and remove the temporary data folder."""
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._own_dir and self._parent is not None:
            shutil.rmtree(self._parent, ignore_errors=True)
