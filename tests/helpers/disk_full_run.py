"""Run ``grpo-audio train`` where process 0's rename of checkpoint STEP into place fails with a full disk (test
helper); the other processes' writes succeed. Exits with the CLI's status.

usage: python disk_full_run.py STEP [KEY=VALUE ...]
"""

import errno
import os
import sys

import grpo_audio.train.trainer as trainer_module
from grpo_audio.cli import main

step, overrides = int(sys.argv[1]), sys.argv[2:]

if os.environ.get("RANK", "0") == "0":
    original = trainer_module.replace_dir_atomic

    def disk_full_at_step(source, target):
        if os.path.basename(target) == f"checkpoint-{step}":
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(source, target)

    trainer_module.replace_dir_atomic = disk_full_at_step

sys.exit(main(["train", *[arg for item in overrides for arg in ("--set", item)]]))
