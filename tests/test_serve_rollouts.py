"""``grpo-audio serve-rollouts``: the rollout server command (the real server it starts is exercised by
``tests/test_vllm_engine.py``'s server fixture, which runs ``server_command``), its argument errors, the SLURM
script that uses it, and the client's refusal of a server without the weight receiver."""

import subprocess
from pathlib import Path

import pytest

from grpo_audio.cli import main
from grpo_audio.rollout.serve import REQUIRED_FLAGS, server_command
from grpo_audio.rollout.vllm_server import VLLMServerClient, VLLMServerError

ROOT = Path(__file__).resolve().parents[1]
SBATCH = ROOT / "configs" / "slurm" / "train_with_vllm_server.sbatch"


def test_the_command_carries_every_flag_the_trainer_needs_then_the_users():
    command = server_command("/data/backbone", ["--tensor-parallel-size", "8"])
    assert command[1:5] == ["-m", "vllm.entrypoints.openai.api_server", "--model", "/data/backbone"]
    assert command[5:-2] == REQUIRED_FLAGS and command[-2:] == ["--tensor-parallel-size", "8"]
    assert "grpo_audio.rollout.weight_receiver.WeightReceiver" in command


def test_a_directory_without_config_is_one_line(tmp_path, capsys):
    assert main(["serve-rollouts", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: {tmp_path} is not a backbone directory (no config.json); write one with `python -m "
        "grpo_audio.rollout.backbone_export MODEL_DIR OUT_DIR`\n"
    )


@pytest.mark.parametrize("flag", ["--logprobs-mode=raw_logprobs", "--worker-extension-cls", "--model"])
def test_a_flag_the_command_sets_itself_is_refused(tmp_path, capsys, flag):
    (tmp_path / "config.json").write_text("{}")
    assert main(["serve-rollouts", str(tmp_path), flag, "x"]) == 2
    assert capsys.readouterr().err == f"error: {flag.split('=')[0]}: set by serve-rollouts itself; leave it out\n"


def test_help(capsys):
    assert main(["serve-rollouts", "--help"]) == 0
    assert capsys.readouterr().out.startswith("usage: grpo-audio serve-rollouts BACKBONE_DIR")


def test_the_slurm_script_parses_and_starts_the_server_with_serve_rollouts():
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    text = SBATCH.read_text()
    assert 'grpo-audio serve-rollouts "$backbone_dir"' in text and "rollout.vllm.sync_port=$SYNC_PORT" in text
    assert "vllm serve" not in text


def test_a_server_without_the_weight_receiver_is_refused_with_the_command_to_start_it():
    client = object.__new__(VLLMServerClient)
    client.url = "http://rollouts:8000"

    def no_such_method(method, *args):
        raise VLLMServerError(f"POST {client.url}/collective_rpc failed with HTTP 500: no attribute {method!r}")

    client._rpc = no_such_method
    with pytest.raises(VLLMServerError) as caught:
        client._check_weight_receiver()
    assert str(caught.value) == (
        "the vLLM server at http://rollouts:8000 cannot receive weights over a channel: start it with `grpo-audio "
        "serve-rollouts BACKBONE_DIR` (it adds the harness's worker extension), or set rollout.vllm.weight_sync=disk"
    )
