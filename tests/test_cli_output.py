"""The command line speaks with one voice: notices ``grpo-audio: ...``, one progress line per step, no third-party
progress bars unless ``grpo-audio --verbose`` asks for them.

* ``say`` and the routing of the package's own loggers through it (``grpo_audio/console.py``).
* The libraries' bar switches that ``hide_library_progress`` sets are the ones the libraries obey.
* ``grpo-audio train`` on the smoke recipe, in a subprocess: every line is a notice or a step line, one per step,
  and no bar; with ``--verbose`` the final save's "Writing model shards" bar (transformers) is back.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from grpo_audio.console import hide_library_progress, notices_through_say, say

ROOT = Path(__file__).resolve().parents[1]
BAR_SWITCHES = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")
STEPS = 2
PROGRESS_LINE = re.compile(r"^step (\d+)/(\d+) \| ")
# What a tqdm bar leaves in captured output: carriage returns, its rate and its percentage bar, and the bars'
# descriptions this run could show
BAR_MARKS = ("\r", "it/s]", "s/it]", "%|", "Loading weights", "Writing model shards", "Map", "Generating train split")


def test_say_writes_one_prefixed_line_on_stdout_or_the_stream_given(capsys):
    say("48 questions, G=4")
    say("interrupted.", stream=sys.stderr)
    captured = capsys.readouterr()
    assert captured.out == "grpo-audio: 48 questions, G=4\n"
    assert captured.err == "grpo-audio: interrupted.\n"


def test_the_packages_loggers_speak_through_say_only_while_routed(capsys):
    data, judge, foreign = (logging.getLogger(n) for n in ("grpo_audio.data", "rewards.judge", "transformers.x"))
    levels = [logging.getLogger(n).level for n in ("grpo_audio", "rewards")]
    with notices_through_say():
        data.warning("data: key %r in %d row(s) is not a field the harness reads", "categroy", 1)
        judge.info("judge answers again")
        foreign.warning("a third-party warning keeps its own handling")
        routed = capsys.readouterr()
    data.warning("after the command: not routed")
    assert routed.out == (
        "grpo-audio: data: key 'categroy' in 1 row(s) is not a field the harness reads\n"
        "grpo-audio: judge answers again\n"
    )
    assert "after the command" not in capsys.readouterr().out
    assert [logging.getLogger(n).level for n in ("grpo_audio", "rewards")] == levels


def test_the_bar_switches_are_the_ones_the_libraries_obey():
    """In a fresh process (each library reads its switch when imported): transformers and datasets draw no bar."""
    probe = (
        "from grpo_audio.console import hide_library_progress\n"
        "hide_library_progress()\n"
        "from datasets.utils.tqdm import are_progress_bars_disabled\n"
        "from transformers.utils.logging import is_progress_bar_enabled\n"
        "print(is_progress_bar_enabled(), are_progress_bars_disabled())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in BAR_SWITCHES}
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=300)
    assert done.stdout.split() == ["False", "True"], done.stdout + done.stderr


def test_a_users_own_setting_of_a_switch_wins(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # the user's: bars on
    # set, then deleted: monkeypatch then restores the variable as it was before this test, whatever the call sets
    monkeypatch.setenv("HF_DATASETS_DISABLE_PROGRESS_BARS", "")
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS")
    hide_library_progress()
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"


def _train(tmp_path: Path, *global_options: str) -> str:
    """``grpo-audio [global_options] train configs/demo.yaml``, shortened to STEPS steps: its stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if k not in BAR_SWITCHES}
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "grpo_audio", *global_options, "train", "configs/demo.yaml"]
    for item in (f"trainer.max_steps={STEPS}", f"run.output_dir={tmp_path / 'run'}"):
        command += ["--set", item]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    return output


@pytest.mark.slow
def test_train_prints_notices_and_one_progress_line_per_step_and_no_bar(tmp_path):
    output = _train(tmp_path)
    assert not [mark for mark in BAR_MARKS if mark in output], output
    lines = [line for line in output.splitlines() if line.strip()]
    foreign = [line for line in lines if not (line.startswith("grpo-audio: ") or PROGRESS_LINE.match(line))]
    assert not foreign, "lines in neither voice:\n" + "\n".join(foreign)
    steps = [PROGRESS_LINE.match(line).groups() for line in lines if PROGRESS_LINE.match(line)]
    assert steps == [(str(i), str(STEPS)) for i in range(1, STEPS + 1)]


@pytest.mark.slow
def test_verbose_brings_the_libraries_bars_back(tmp_path):
    output = _train(tmp_path, "--verbose")
    assert re.search(r"Writing model shards: +100%\|", output), output
    assert len([line for line in output.splitlines() if PROGRESS_LINE.match(line)]) == STEPS
