"""The Qwen families with a separate vLLM server (``rollout.vllm.mode: server``), as the SLURM script runs them: the
backbone exported from the family's model directory (``python -m grpo_audio.rollout.backbone_export``), the server
started with ``grpo-audio serve-rollouts``' command, and a run whose weights reach the server over the process
group each step; the server's sampling log-probs equal the trainer's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HELPERS = Path(__file__).resolve().parent / "helpers"
TINY = ["model.tiny.hidden_size=128", "model.tiny.num_heads=4", "model.tiny.intermediate_size=256"]
COMMON = [*TINY, "data.synthetic.num_questions=8", "rollout.max_completion_length=12", "trainer.learning_rate=5e-2"]
COMMON.append('rewards.terms=[{name: "helpers.mixed_signal:half_informative", label: mixed}]')  # groups with variance


def train(run_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    overrides = [f"run.output_dir={run_dir}", *COMMON, *extra]
    argv = [sys.executable, "-m", "grpo_audio", "train", *[x for o in overrides for x in ("--set", o)]]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(HELPERS.parent), str(HELPERS)])}
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=env)


@pytest.mark.slow
@pytest.mark.vllm
@pytest.mark.parametrize("family", ["qwen2_audio", "qwen2_5_omni_thinker"])
def test_a_qwen_family_trains_against_a_vllm_server_with_weights_sent_over_the_process_group(tmp_path, family):
    pytest.importorskip("vllm")
    from helpers.ports import candidate_port
    from helpers.vllm_server import start_backbone_server

    from grpo_audio.rollout.backbone_export import main as export_main

    first = tmp_path / "first"
    done = train(first, f"model.family={family}", "trainer.max_steps=1")
    assert done.returncode == 0, done.stderr[-3000:]
    backbone = tmp_path / "backbone"
    assert export_main([str(first / "final_model"), str(backbone), "--dtype", "float32"]) == 0  # the family's own

    process, url = start_backbone_server(backbone, tmp_path / "server.log")
    try:
        run = tmp_path / "run"
        server = ["rollout.engine=vllm", "rollout.vllm.mode=server", f"rollout.vllm.server_url={url}"]
        server += [f"rollout.vllm.backbone_dir={backbone}", f"rollout.vllm.sync_port={candidate_port()}"]
        done = train(
            run, f"model.family={family}", *server, "trainer.max_steps=2", "rollout.vllm.server_timeout_s=120"
        )
        assert done.returncode == 0, done.stderr[-4000:]
    finally:
        process.terminate()
        process.wait(timeout=60)
    steps = [m for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:  # the server samples from the trainer's weights, sent before each step's rollouts
        assert m["weight_sync/bytes"] > 0
        assert m["sampling/sampling_logp_difference/max"] < 1e-5, m
        low, high = (m[f"sampling/importance_sampling_ratio/{k}"] for k in ("min", "max"))
        assert 1 - 1e-4 < low <= high < 1 + 1e-4
