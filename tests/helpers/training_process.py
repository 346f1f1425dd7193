"""A training command started in the background and read until it reaches a step, for the tests that signal it
mid-run (Ctrl-C, preemption)."""

import signal
import subprocess
from pathlib import Path


def _default_sigint() -> None:
    # A command started in the background by a shell without job control inherits SIGINT ignored, and Python then
    # installs no KeyboardInterrupt handler: give the run the disposition a terminal's Ctrl-C meets.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_until_step(command: list[str], step: int, cwd: Path, env: dict) -> subprocess.Popen:
    """Start ``command`` and return once it has printed its progress line for ``step`` (``step N/...``), the process
    still running; stdout and stderr are pipes (the rest of both is read with ``communicate``)."""
    proc = subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        bufsize=1,
        preexec_fn=_default_sigint,
    )
    for line in proc.stdout:
        if line.startswith(f"step {step}/"):
            return proc
    _, err = proc.communicate()
    raise AssertionError(f"the run ended (exit {proc.returncode}) before step {step}: {err[-3000:]}")
