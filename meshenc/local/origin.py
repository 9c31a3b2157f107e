"""A real HTTP origin as a local process: Debian's nginx with its WebDAV module, on 127.0.0.1.

Used by the tests and (later) embedded mode, like :class:`meshenc.local.etcd.EtcdProcess`. The
origin takes ``PUT`` (creating the folders of a nested name) and ``DELETE`` of any path under
its root folder, and serves ``GET``/``HEAD`` of what was put, with the content types of HLS
(``.m3u8``, ``.ts``) and of DASH/CMAF (``.mpd``, ``.mp4``, ``.m4s``). nginx writes a PUT's body
to a temp file and renames it into place, so a reader gets a whole object or none.

It runs as the calling user: its config, pid file, temp folders and log live in a folder of its
own. It is one process (no master and workers) in a process group of its own, so a
``kill`` leaves nothing behind; when the caller is root its ``user`` is root too (nginx's
default would drop to ``nobody``, who could not write the caller's folder). Files land as
``rw-r--r--``. ``stop`` and ``restart`` keep the root, the port and the config, as after an
outage; ``kill`` is a crash.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO, Self

from meshenc.local.ports import free_ports
from meshenc.local.process import ManagedProcess
from services.encoder.media.publish import CONTENT_TYPES

__all__ = [
    "OriginNotInstalledError",
    "OriginProcess",
]


#: Where Debian installs nginx; not on a non-root user's PATH.
_SYSTEM_DIRS = "/usr/sbin:/sbin"
#: Characters that would change the meaning of a path inside nginx's config.
_UNSAFE_PATH = re.compile(r'["\\$;{}\x00-\x1f\x7f]')


class OriginNotInstalledError(RuntimeError):
    """The ``nginx`` binary is not installed."""


def _config_path(path: Path) -> str:
    text = str(path)
    if _UNSAFE_PATH.search(text):
        raise ValueError(
            f"{text!r}: the origin's folders must not contain quotes, backslashes, '$', ';', "
            "braces or control characters"
        )
    return f'"{text}"'


class OriginProcess(ManagedProcess):
    """One nginx serving ``root`` over HTTP on 127.0.0.1, writable with ``PUT``.

    Args:
        root: the folder served and written (created if missing); a temporary one (removed by
            :meth:`close`) when None.
        binary: the nginx executable (looked up on PATH, then in /usr/sbin).
        log_path: nginx's error log (and access log with ``access_log``) is appended here across
            restarts; kept in the origin's own folder when None.
        access_log: also log every request.
        max_object_size: the largest body a PUT may carry, in bytes (larger: 413).
        start_timeout: seconds to wait for nginx to answer HTTP.
        limited_rate: also serve ``root``, read-only, on a second port (``limited_url``) at
            this many bytes a second per connection (nginx's ``limit_rate``): a constrained
            link for a player's own rate adaptation. None: no such port.
    """

    def __init__(
        self,
        root: Path | None = None,
        *,
        binary: str = "nginx",
        log_path: Path | None = None,
        access_log: bool = False,
        max_object_size: int = 256 * 1024 * 1024,
        start_timeout: float = 10.0,
        limited_rate: int | None = None,
    ) -> None:
        found = shutil.which(binary) or shutil.which(binary, path=_SYSTEM_DIRS)
        if found is None:
            raise OriginNotInstalledError(
                f"{binary!r} is not installed or not on PATH; on Debian/Ubuntu install the "
                "nginx package (`make system-deps` does)"
            )
        if max_object_size < 1:
            raise ValueError(f"max_object_size must be positive, got {max_object_size}")
        if limited_rate is not None and limited_rate < 1:
            raise ValueError(f"limited_rate must be positive, got {limited_rate}")
        self._binary = found
        self._state = Path(tempfile.mkdtemp(prefix="meshenc-origin-"))
        self.root = (self._state / "root" if root is None else Path(root)).resolve()
        self.log_path = log_path if log_path is not None else self._state / "nginx.log"
        self._access_log = access_log
        self._max_object_size = max_object_size
        self._start_timeout = start_timeout
        self._log: IO[bytes] | None = None
        self._limited_rate = limited_rate
        self.port, self.limited_port = free_ports(2)
        self._process: subprocess.Popen[bytes] | None = None
        self.config_path = self._state / "nginx.conf"
        try:
            self.config_path.write_text(self._config())
        except BaseException:
            shutil.rmtree(self._state, ignore_errors=True)
            raise

    @property
    def url(self) -> str:
        """The origin's base URL, ``http://127.0.0.1:PORT`` (objects are at ``url/NAME``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def limited_url(self) -> str | None:
        """The same objects over the constrained link (None: the origin has none)."""
        return None if self._limited_rate is None else f"http://127.0.0.1:{self.limited_port}"

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _config(self) -> str:
        state = self._state
        user = ""
        if os.geteuid() == 0:
            # As root, nginx would switch to `nobody`; stay the caller.
            name = pwd.getpwuid(os.geteuid()).pw_name
            group = grp.getgrgid(os.getegid()).gr_name
            user = f"user {name} {group};"
        temp = {
            kind: _config_path(state / "temp" / kind)
            for kind in ("body", "proxy", "fastcgi", "uwsgi", "scgi")
        }
        # The publisher's table: the origin, the encoders' own servers and the PUTs agree.
        types = "\n".join(
            f"        {kind} {suffix.lstrip('.')};" for suffix, kind in CONTENT_TYPES.items()
        )
        access = "access_log /dev/stderr;" if self._access_log else "access_log off;"
        limited = ""
        if self._limited_rate is not None:
            limited = f"""
    # The same objects over a constrained link (no dav_methods: read-only), every response at most
    # {self._limited_rate} bytes a second.
    server {{
        listen 127.0.0.1:{self.limited_port};
        root {_config_path(self.root)};
        limit_rate {self._limited_rate};
        add_header Access-Control-Allow-Origin "*" always;
        location ~ \\.(m3u8|mpd)$ {{
            add_header Access-Control-Allow-Origin "*" always;
            add_header Cache-Control "no-cache" always;
        }}
    }}
"""
        return f"""\
# Written by meshenc.local.origin for one local origin; regenerated on every run.
{user}
daemon off;
# One process, no workers: a SIGKILL leaves nothing behind, as with any other child.
master_process off;
pid {_config_path(state / "nginx.pid")};
error_log stderr warn;

events {{
    worker_connections 256;
}}

http {{
    types {{
{types}
    }}
    default_type application/octet-stream;
    {access}
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    client_max_body_size {self._max_object_size};
    server_tokens off;
    log_not_found off;
    sendfile on;

    server {{
        listen 127.0.0.1:{self.port};
        root {_config_path(self.root)};
        dav_methods PUT DELETE;
        create_full_put_path on;
        dav_access user:rw group:r all:r;
        # Any page may read the stream, and its Date header (a DASH player without a UTCTiming
        # element sets its clock by the manifest's Date).
        add_header Access-Control-Allow-Origin "*" always;
        add_header Access-Control-Expose-Headers "Date" always;

        # Live playlists change under the same name: never cached.
        location ~ \\.(m3u8|mpd)$ {{
            add_header Access-Control-Allow-Origin "*" always;
            add_header Access-Control-Expose-Headers "Date" always;
            add_header Cache-Control "no-cache" always;
        }}
    }}
{limited}}}
"""

    def start(self) -> Self:
        """Start nginx and return once it answers HTTP.

        Raises:
            RuntimeError: nginx exited or did not answer in time (its log is named).
        """
        if self.running:
            return self
        self.root.mkdir(parents=True, exist_ok=True)
        for kind in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self._state / "temp" / kind).mkdir(parents=True, exist_ok=True)
        if self._log is None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = self.log_path.open("ab")
        command = [
            self._binary,
            "-p", str(self._state),
            "-c", str(self.config_path),
            "-e", "stderr",  # the log before the config is read (else /var/log/nginx/)
        ]  # fmt: skip
        # Its own process group: a Ctrl-C in the terminal does not stop the origin before the
        # encoders publishing to it; whoever started it stops it.
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=self._log, process_group=0
        )
        deadline = time.monotonic() + self._start_timeout
        while not self._answers():
            code = self._process.poll()
            if code is not None:
                self._reap()
                raise RuntimeError(f"nginx exited with code {code} at start (log: {self.log_path})")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(
                    f"nginx did not answer within {self._start_timeout} s (log: {self.log_path})"
                )
            time.sleep(0.05)
        return self

    def _answers(self) -> bool:
        """Whether nginx answers an HTTP request (any status: 404 is an answer)."""
        request = urllib.request.Request(f"{self.url}/.meshenc-origin-probe", method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=1.0):
                return True
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False

    def stop(self, timeout: float = 10.0) -> None:
        """Fast shutdown (SIGTERM) and wait; SIGKILL after ``timeout`` seconds."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=timeout)  # then SIGKILL below
        self._reap()

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        self._reap()

    def _reap(self) -> None:
        """SIGKILL whatever is left of the process group, and wait for it."""
        process, self._process = self._process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def restart(self) -> Self:
        """Stop (if running) and start again with the same root, port and config."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Kill nginx, close its log and remove its own folder (and a temporary root)."""
        self.kill()
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self._state, ignore_errors=True)
