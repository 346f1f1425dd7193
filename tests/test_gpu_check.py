"""bench/gpu_check.py on the CPU with its tiny preset (the same code path as the GPU run), so it cannot rot."""

import json
import runpy
import sys
import time
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.fixture(scope="module")
def gpu_check():
    sys.path.insert(0, str(BENCH))  # the script imports its sibling gpu_model
    try:
        yield runpy.run_path(str(BENCH / "gpu_check.py"), run_name="gpu_check")
    finally:
        sys.path.remove(str(BENCH))


def test_released_id_tokenizer_carries_the_released_special_token_ids(gpu_check):
    from gpu_model import RELEASED_IDS, released_id_tokenizer

    tokenizer = released_id_tokenizer(["Is the tone high or low?"] * 4)
    assert len(tokenizer) == 151671  # the first speech-token id, as released
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in RELEASED_IDS} == RELEASED_IDS
    assert tokenizer.convert_tokens_to_ids("<|cAUDIO|>") == 151666 and tokenizer.eos_token_id == 151643
    ids = tokenizer("<|begofcAUDIO|><|cAUDIO|><|cAUDIO|><|endofcAUDIO|>high", add_special_tokens=False)["input_ids"]
    assert ids[:4] == [151665, 151666, 151666, 151667] and max(ids[4:]) < 512  # text stays in the tiny BPE
    # a random model samples the padding ids: they decode like any other
    assert isinstance(tokenizer.decode([1000, 150000, 151642], skip_special_tokens=True), str)


def test_random_model_is_built_in_the_requested_dtype(gpu_check):
    from gpu_model import build_random_model, released_id_tokenizer

    config = gpu_check["tiny_config"](gpu_check["TINY_SPEC"], released_id_tokenizer(["a b"]))
    model = build_random_model(config, torch.device("cpu"), torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored
    assert model.lm_head.weight.shape == (168055, 64) and config.audio_token_index == 151671
    rotary = dict(model.named_buffers())["model.language_model.rotary_emb.inv_freq"]
    assert rotary.dtype == torch.float32  # positions keep their precision


@pytest.mark.slow
def test_tiny_preset_runs_every_phase_and_writes_the_table(gpu_check, tmp_path, capsys):
    assert gpu_check["main"](["--preset", "tiny", "--out", str(tmp_path), "--device", "cpu"]) == 0
    data = json.loads((tmp_path / "gpu_check.json").read_text())
    rows = {r["phase"]: r for r in data["phases"]}
    expected = ["build", "encoder", "rollout_4", "lora_mb1_ckpt", "lora_mb4_ckpt", "lora_mb1", "lora_mb4"]
    assert list(rows) == expected + ["rollout_8", "full_mb1_ckpt"]
    assert {r["status"] for r in rows.values()} == {"ok"}, rows
    assert data["info"]["placeholders"] == 13 and data["info"]["versions"]["trl"]  # 2 s clips: 13 frames
    for name in ("rollout_4", "rollout_8"):
        assert "lengths [" + name.split("_")[1] + "]" in rows[name]["note"]  # every completion ran to full length
    for name in expected[3:] + ["full_mb1_ckpt"]:
        step = rows[name]
        assert step["rollout_s"] > 0 and step["update_s"] > 0 and step["step_s"] >= step["update_s"]
        assert step["logs"]["completions/mean_length"] == 8  # forced to the full length in the trainer too
        # the drift measurement: the HF engine's log-probs against the trainer's (bf16 here, as on the GPU)
        assert step["logs"]["sampling/sampling_logp_difference/max"] >= 0
        assert 0 <= step["logs"]["sampling/outside_support_frac"] <= 1
        assert step["plan_train_gib"] > 0 and step["plan_rollout_gib"] > 0
    assert rows["full_mb1_ckpt"]["plan_train_gib"] > rows["lora_mb1_ckpt"]["plan_train_gib"]
    # the first phases share one model; every other phase's model is gone when it ends (no 16 GiB leak per phase)
    assert [r["models_alive"] for r in rows.values()] == [1, 1, 1, 0, 0, 0, 0, 0, 0]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| full_mb1_ckpt | ok |" in table and table.strip() in capsys.readouterr().out


def cpu_check(gpu_check, tmp_path, budget_s: float):
    return gpu_check["Check"](
        gpu_check["PRESETS"]["tiny"], torch.device("cpu"), torch.bfloat16, tmp_path, tmp_path, budget_s
    )


def test_a_phase_that_does_not_fit_the_budget_is_recorded_as_skipped(gpu_check, tmp_path):
    check = cpu_check(gpu_check, tmp_path, budget_s=-1.0)
    ran = []
    row = gpu_check["run_phase"](check, "lora_mb1", lambda c: ran.append(1) or {}, estimate=5.0)
    assert row["status"] == "skipped" and "needs ~5 s" in row["note"] and not ran


def test_out_of_memory_is_recorded_as_the_phases_result(gpu_check, tmp_path):
    check = cpu_check(gpu_check, tmp_path, budget_s=1e4)

    def too_big(check):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 14.50 GiB.\nmore detail")

    row = gpu_check["run_phase"](check, "full_mb1_ckpt", too_big, estimate=1.0)
    assert row["status"] == "out of memory" and row["note"] == "CUDA out of memory. Tried to allocate 14.50 GiB."


def test_a_phase_that_overruns_the_budget_is_stopped(gpu_check, tmp_path):
    check = cpu_check(gpu_check, tmp_path, budget_s=1e4)
    start = time.monotonic()
    with gpu_check["deadline"](0.2):
        row = gpu_check["run_phase"](check, "rollout_8", lambda c: time.sleep(30) or {}, estimate=0.0)
    assert row["status"] == "stopped" and time.monotonic() - start < 10
