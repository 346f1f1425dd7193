"""The command line's one voice: every progress line and notice of the harness goes through ``say``.

``say("text")`` writes ``grpo-audio: text`` to standard output, flushed (so it interleaves correctly with the
progress lines of a subprocess or of other processes under ``accelerate launch``). Errors that end a command are
not notices: the CLI prints them as ``error: ...`` on standard error.
"""

from __future__ import annotations

import sys

PREFIX = "grpo-audio: "


def say(message: str, *, stream=None) -> None:
    """One line ``grpo-audio: message`` on ``stream`` (standard output by default), flushed."""
    print(f"{PREFIX}{message}", file=stream or sys.stdout, flush=True)
