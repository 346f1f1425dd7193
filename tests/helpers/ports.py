"""Loopback ports for tests, without the bind-close-reuse race (a port closed and named later can be taken by
another process in between).

* ``refusing_port``: a port that refuses connections for as long as the ``with`` block runs.
* ``start_on_some_port``: start an external server that must be told its port, and start it again on another port
  when it loses the one it was given.
"""

from __future__ import annotations

import errno
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"


@contextmanager
def refusing_port() -> Iterator[int]:
    """A port on 127.0.0.1 that refuses connections while the block runs: bound, so that no other process can take
    it, but never listening (Linux answers a connect to it with a reset, i.e. ECONNREFUSED)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        yield sock.getsockname()[1]


def candidate_port() -> int:
    """A port the OS just handed out and released. Nothing holds it afterwards: the caller must cope with losing it
    (``start_on_some_port`` does)."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def start_on_some_port(
    command: Callable[[int], list[str]],
    env: dict[str, str],
    log: Path,
    ready_path: str,
    timeout_s: float = 600.0,
    attempts: int = 5,
) -> tuple[subprocess.Popen, str]:
    """Start ``command(port)`` (stdout and stderr to ``log``) and wait until ``http://127.0.0.1:<port><ready_path>``
    answers; returns the process and its base URL. A server that exits because its port was taken in the meantime
    (EADDRINUSE in its log) is started again on another port, up to ``attempts`` times; any other early exit, or no
    answer within ``timeout_s`` seconds, raises with the log's tail."""
    deadline = time.monotonic() + timeout_s
    in_use = f"[Errno {errno.EADDRINUSE}]"  # what Python's OSError prints, whatever the message's language
    for _ in range(attempts):
        port = candidate_port()
        argv = command(port)
        with log.open("w") as out:
            process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        url = f"http://{HOST}:{port}"
        try:
            if _wait_until_ready(process, url + ready_path, deadline):
                return process, url
        except BaseException:
            process.terminate()
            process.wait(timeout=60)
            raise
        text = log.read_text(errors="replace")
        if in_use not in text:
            raise RuntimeError(f"{' '.join(argv)} exited ({process.returncode}):\n{text[-4000:]}")
    raise RuntimeError(f"the server lost its port {attempts} times in a row; last log:\n{text[-4000:]}")


def _wait_until_ready(process: subprocess.Popen, url: str, deadline: float) -> bool:
    """True once ``url`` answers; False if the process exits first; TimeoutError past ``deadline``."""
    while True:
        if process.poll() is not None:
            return False
        try:
            urllib.request.urlopen(url, timeout=5).close()
            return True
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing answered at {url} before the deadline") from None
            time.sleep(2)
