"""The ``accelerate launch`` command line of the multi-process tests, written once."""

from __future__ import annotations

import sys
from pathlib import Path

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"


def accelerate_launch(processes: int = 2, config: str = "ddp.yaml") -> list[str]:
    """``accelerate launch`` (this interpreter's) with the repository's ``configs/accelerate/<config>`` on
    ``processes`` processes, in float32 (``--mixed_precision no`` overrides the config's bf16, which is for GPUs),
    on a rendezvous port the OS picks (``--main_process_port 0``: two launches at once never collide); the program
    and its arguments follow, e.g. ``[*accelerate_launch(), "-m", "grpo_audio", "train", ...]``."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(ACCELERATE_CONFIGS / config),
        "--num_processes",
        str(processes),
        "--mixed_precision",
        "no",
        "--main_process_port",
        "0",
    ]
