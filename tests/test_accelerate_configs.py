"""The shipped accelerate configs, read by accelerate's own launcher code into the plugins a GPU launch builds.

ZeRO and FSDP cannot train here: accelerate enables them only on GPUs (on CPU it would silently fall back to
unsharded DDP, which the harness refuses), and DeepSpeed does not install without CUDA. What is checked on CPU:
each config parses, becomes the environment ``accelerate launch`` gives the processes, and that environment builds
the FSDP / DeepSpeed plugin with the intended settings; FSDP's wrap class exists in the model; the refusal itself
runs through a real 2-process launch.
"""

import os
import subprocess
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DeepSpeedPlugin, FullyShardedDataParallelPlugin
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env
from helpers.accelerate_launch import accelerate_launch

from grpo_audio.distributed import LaunchError, check_sharding_backend
from grpo_audio.recipe.schema import TinyModelSpec

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "accelerate"


def launch_env(name: str) -> dict[str, str]:
    """The environment ``accelerate launch --config_file <name>`` gives each training process."""
    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / name), "train.py"])
    args, _, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ""
        return prepare_deepspeed_cmd_env(args)[1]
    return prepare_multi_gpu_env(args)


def test_every_shipped_config_parses_with_the_intended_backend():
    expected = {
        "single_gpu.yaml": ("NO", 1),
        "ddp.yaml": ("MULTI_GPU", 8),
        "zero2.yaml": ("DEEPSPEED", 8),
        "zero3.yaml": ("DEEPSPEED", 8),
        "fsdp.yaml": ("FSDP", 8),
    }
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(expected)
    for name, (kind, processes) in expected.items():
        config = load_config_from_file(str(CONFIGS / name))
        assert (str(config.distributed_type).rsplit(".", 1)[-1], config.num_processes) == (kind, processes), name


def test_fsdp_config_builds_an_fsdp2_plugin_that_wraps_the_decoder_layers(monkeypatch, model):
    env = launch_env("fsdp.yaml")
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
    assert str(plugin.state_dict_type).endswith("FULL_STATE_DICT")  # final_model/ needs the full weights
    classes = {type(m).__name__ for m in model.modules()}
    assert set(plugin.transformer_cls_names_to_wrap) <= classes  # the wrap policy finds units to shard
    layers = [m for m in model.modules() if type(m).__name__ in plugin.transformer_cls_names_to_wrap]
    assert len(layers) == TinyModelSpec().num_layers


@pytest.mark.parametrize("name, stage", [("zero2.yaml", 2), ("zero3.yaml", 3)])
def test_deepspeed_configs_build_the_zero_stage(monkeypatch, name, stage):
    env = launch_env(name)
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    for key, value in env.items():
        if key.startswith("ACCELERATE_DEEPSPEED_"):
            monkeypatch.setenv(key, value)
    plugin = DeepSpeedPlugin()
    zero = plugin.deepspeed_config["zero_optimization"]
    assert zero["stage"] == stage and zero["offload_param"]["device"] == "none"
    if stage == 3:
        assert plugin.zero3_init_flag and zero["stage3_gather_16bit_weights_on_model_save"]


def test_sharding_requested_without_a_gpu_is_refused(monkeypatch):
    check_sharding_backend(has_gpu=False)  # plain launch: fine
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    check_sharding_backend(has_gpu=True)
    with pytest.raises(LaunchError, match="asks for FSDP"):
        check_sharding_backend(has_gpu=False)
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(LaunchError, match="asks for DeepSpeed"):
        check_sharding_backend(has_gpu=False)


@pytest.mark.slow
def test_fsdp_launch_on_cpu_stops_with_a_clear_error(tmp_path):
    command = [
        *accelerate_launch(config="fsdp.yaml"),
        "-m",
        "grpo_audio",
        "train",
        "--set",
        f"run.output_dir={tmp_path / 'run'}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0
    assert "the launch asks for FSDP (ACCELERATE_USE_FSDP=true), which accelerate runs only on GPUs" in done.stderr
    assert not (tmp_path / "run").exists()  # refused before anything was written
