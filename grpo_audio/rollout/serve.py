"""``grpo-audio serve-rollouts BACKBONE_DIR [vLLM options]``: the rollout server for ``rollout.vllm.mode: server``.

Runs vLLM's OpenAI-compatible server on a backbone directory (``python -m grpo_audio.rollout.backbone_export``
writes one) with what the trainer relies on, so that no flag can be forgotten:

    VLLM_SERVER_DEV_MODE=1 python -m vllm.entrypoints.openai.api_server --model BACKBONE_DIR
        --enable-prompt-embeds --skip-tokenizer-init --logprobs-mode processed_logprobs
        --worker-extension-cls grpo_audio.rollout.weight_receiver.WeightReceiver [vLLM options]

(dev mode: the ``/collective_rpc`` and ``/reset_prefix_cache`` endpoints weight sync uses; the worker extension:
weights received over the channel, ``weight_receiver.py``; runtime LoRA updating: with ``model.lora`` the adapter
is reloaded in place at each sync, for which the server needs ``--enable-lora --max-lora-rank R``). Every further
option goes to vLLM as given, e.g. ``--tensor-parallel-size 8 --port 8000``. The process is replaced by vLLM's
(``exec``), so signals reach it directly.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REQUIRED_FLAGS = [
    "--enable-prompt-embeds",
    "--skip-tokenizer-init",
    "--logprobs-mode",
    "processed_logprobs",
    "--worker-extension-cls",
    "grpo_audio.rollout.weight_receiver.WeightReceiver",
]
OWN_FLAGS = {"--model", "--enable-prompt-embeds", "--skip-tokenizer-init", "--logprobs-mode", "--worker-extension-cls"}
USAGE = "usage: grpo-audio serve-rollouts BACKBONE_DIR [vLLM options, e.g. --tensor-parallel-size 8 --port 8000]"


def server_command(backbone_dir: str, options: list[str]) -> list[str]:
    """The argv of the vLLM server for ``backbone_dir`` with the flags the trainer needs, then ``options``."""
    return [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        backbone_dir,
        *REQUIRED_FLAGS,
        *options,
    ]


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(f"{USAGE}\n\n{__doc__}")
        return 0 if argv else 2
    backbone, options = argv[0], argv[1:]
    if not (Path(backbone) / "config.json").is_file():
        print(
            f"error: {backbone} is not a backbone directory (no config.json); write one with `python -m "
            "grpo_audio.rollout.backbone_export MODEL_DIR OUT_DIR`",
            file=sys.stderr,
        )
        return 2
    taken = sorted({option.split("=")[0] for option in options if option.split("=")[0] in OWN_FLAGS})
    if taken:
        print(f"error: {', '.join(taken)}: set by serve-rollouts itself; leave it out", file=sys.stderr)
        return 2
    command = server_command(backbone, options)
    os.environ["VLLM_SERVER_DEV_MODE"] = "1"
    os.environ["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"  # LoRA-only sync reloads the adapter in place
    sys.stdout.flush()
    os.execv(command[0], command)
    return 0  # not reached
