"""A training command started in the background and read until it reaches a step, for the tests that signal it
mid-run (Ctrl-C, preemption)."""

import subprocess
from pathlib import Path


def start_until_step(command: list[str], step: int, cwd: Path, env: dict) -> subprocess.Popen:
    """Start ``command`` and return once it has printed its progress line for ``step`` (``step N/...``), the process
    still running; stdout and stderr are pipes (the rest of both is read with ``communicate``)."""
    proc = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1
    )
    for line in proc.stdout:
        if line.startswith(f"step {step}/"):
            return proc
    _, err = proc.communicate()
    raise AssertionError(f"the run ended (exit {proc.returncode}) before step {step}: {err[-3000:]}")
