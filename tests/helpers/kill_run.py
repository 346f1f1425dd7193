"""Run ``grpo-audio train`` with overrides and SIGKILL the process at a chosen checkpoint (test helper).

usage: python kill_run.py MODE STEP [KEY=VALUE ...]
MODE: ``after_save`` kills right after checkpoint STEP is complete; ``during_save`` kills while checkpoint STEP's
optimizer state is being written (its weights are already on disk in the staging directory).
"""

import os
import signal
import sys

from transformers import TrainerCallback

from grpo_audio.recipe import load_recipe
from grpo_audio.train.run import train
from grpo_audio.train.trainer import AudioGRPOTrainer

mode, step, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]


class KillAfterSave(TrainerCallback):
    def on_save(self, args, state, control, **kwargs):
        if mode == "after_save" and state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)


if mode == "during_save":
    original = AudioGRPOTrainer._save_optimizer_and_scheduler

    def kill_midway(self, output_dir):
        if self.state.global_step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(self, output_dir)

    AudioGRPOTrainer._save_optimizer_and_scheduler = kill_midway

train(load_recipe(None, overrides), extra_callbacks=[KillAfterSave()])
