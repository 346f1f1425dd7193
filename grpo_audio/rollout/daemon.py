"""Work in a daemon thread, its outcome in a future: waits that may never end (a peer that died, a request whose
server went away) must not hold the process open when it exits on an error."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future


def in_daemon_thread(function: Callable, *args) -> Future:
    """``function(*args)`` in a new daemon thread; its result or error in the returned future."""
    future: Future = Future()

    def run() -> None:
        try:
            future.set_result(function(*args))
        except BaseException as err:  # handed to whoever waits on the future
            future.set_exception(err)

    threading.Thread(target=run, daemon=True, name=getattr(function, "__name__", "work")).start()
    return future


__all__ = ["in_daemon_thread"]
