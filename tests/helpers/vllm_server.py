"""A real vLLM server (``grpo-audio serve-rollouts``' command line) on an exported backbone, for the server-mode
tests: float32, eager, a 1,024-token context and a small CPU KV cache, on a loopback port of its own."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from helpers.ports import start_on_some_port


def start_backbone_server(backbone: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """Start the server on ``backbone`` (its output to ``log``) and wait until it answers; returns the process and
    its base URL. The caller terminates the process."""
    from grpo_audio.rollout.serve import server_command

    def command(port: int) -> list[str]:
        options = ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
        return server_command(str(backbone), [*options, "--max-model-len", "1024"])

    env = {
        **os.environ,
        "VLLM_SERVER_DEV_MODE": "1",  # the weight-sync endpoints
        "VLLM_CPU_KVCACHE_SPACE": "1",
        "VLLM_CACHE_ROOT": str(Path(tempfile.gettempdir()) / "grpo-audio-vllm-cache"),
    }
    return start_on_some_port(command, env, log, "/v1/models", timeout_s=600)
