"""The command line's one voice: every progress line and notice of the harness goes through ``say``.

``say("text")`` writes ``grpo-audio: text`` to standard output, flushed (so it interleaves correctly with the
progress lines of a subprocess or of other processes under ``accelerate launch``). Errors that end a command are
not notices: the CLI prints them as ``error: ...`` on standard error.

Two more things keep the command line's output to that voice; the CLI sets both up before a command runs:

* ``notices_through_say()``: a few modules report through ``logging`` instead (loggers ``grpo_audio.*`` and
  ``rewards.*``: the ``rewards`` package sits below the harness and imports none of it); while a command runs,
  their records go through ``say`` too, so a notice reads the same whichever API emitted it. Used as a library,
  the package leaves those loggers alone: where records go is then the application's choice.
* ``hide_library_progress()``: the progress bars the libraries draw on their own (transformers' "Loading weights"
  and "Writing model shards", huggingface_hub's downloads, datasets' "Map" and "Generating train split", vLLM's
  "Loading safetensors checkpoint shards") would break into the harness's one line per step; they stay hidden
  unless the user asks for them (``grpo-audio --verbose``).
"""

from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager

PREFIX = "grpo-audio: "
NOTICE_LOGGERS = ("grpo_audio", "rewards")

# Each library's documented switch for its own bars, read when the library is imported (so set before any of them
# is), inherited by the processes a command starts, and overridden by the user's own setting of the same variable.
# transformers draws its bars only while huggingface_hub's are on (it reads hub's switch when imported), and the
# harness starts its in-process vLLM engine with weight-loading bars only while they are on (vllm_inprocess.py).
_LIBRARY_BAR_SWITCHES = {
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
}


def say(message: str, *, stream=None) -> None:
    """One line ``grpo-audio: message`` on ``stream`` (standard output by default), flushed."""
    print(f"{PREFIX}{message}", file=stream or sys.stdout, flush=True)


class _SayHandler(logging.Handler):
    """Writes each log record's message with ``say``: the same line a direct notice would be."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            say(self.format(record))
        except Exception:
            self.handleError(record)


@contextmanager
def notices_through_say():
    """While inside, the records (INFO and above) of the package's own loggers also go through ``say``; on exit the
    loggers are as they were, so a program that runs the command line in-process (a test) keeps its own logging.
    Records still propagate: the command line configures no root handler, so nothing is printed twice."""
    handler = _SayHandler()
    loggers = [logging.getLogger(name) for name in NOTICE_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(handler)
            logger.setLevel(level)


def hide_library_progress() -> None:
    """Turn off the libraries' own progress bars for this process and the ones it starts (see the module docstring);
    a no-op for a library already imported, so call it first."""
    for name, value in _LIBRARY_BAR_SWITCHES.items():
        os.environ.setdefault(name, value)
