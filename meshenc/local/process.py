"""A helper program this machine runs for a local mesh (etcd, the origin's nginx): started on
entering a ``with`` block, stopped on leaving it, killed if it is ever left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from types import TracebackType
from typing import Self

__all__ = ["ManagedProcess"]


class ManagedProcess:
    """What etcd and the origin share: ``start()``/``close()`` as a context manager, and a
    last-resort kill of the process (its whole group, when it leads one) when the object is
    collected without having been closed."""

    _process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            process = self._process
            if process is not None and process.poll() is None:
                if os.getpgid(process.pid) == process.pid:
                    os.killpg(process.pid, signal.SIGKILL)
                else:
                    process.kill()
