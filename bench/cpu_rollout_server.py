"""A vLLM rollout server on this machine's CPU for the benchmarks: the ``grpo-audio serve-rollouts`` command
(``grpo_audio.rollout.serve.server_command``) with float32 weights, eager execution and a 1 GiB KV cache."""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from grpo_audio.rollout.serve import server_command


def free_port() -> int:
    """A loopback port the OS just handed out and released."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    backbone: Path, log: Path, extra: tuple[str, ...] = (), timeout_s: float = 900.0
) -> tuple[subprocess.Popen, str]:
    """Start the server on ``backbone`` with vLLM options ``extra`` (output to ``log``) and wait until it answers;
    (process, base URL)."""
    port = free_port()
    options = ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager", *extra]
    command = server_command(str(backbone), [*options, "--max-model-len", "1024"])
    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"  # as serve-rollouts sets it
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            urllib.request.urlopen(url + "/v1/models", timeout=5).close()
            return process, url
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {log.read_text()[-3000:]}") from None
            time.sleep(1)
