"""The vLLM rollout engine on the real vLLM engine (``vllm-cpu`` on CPU; the same code runs on CUDA).

Run on its own: ``pytest -m vllm tests/test_vllm_engine.py``. Engine starts are the slow part: one in-process engine
serves every colocate test (module fixture); the server-mode tests start one ``vllm serve`` process; the training
test runs ``grpo-audio train`` in a subprocess (its own engine). The tiny model uses head size 32 (hidden 128, 4
heads): vLLM's CPU attention has no kernels for the default tiny model's 16.
"""

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Before vLLM is imported: the in-process engine core (weights pushed straight into its model runner), a 1 GiB KV
# cache on CPU, and a compile cache outside the home directory (kept between runs so later starts are warm).
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tempfile.gettempdir()) / "grpo-audio-vllm-cache"))

import pytest

pytest.importorskip("vllm")

import copy
import json

import torch
from helpers.accelerate_launch import accelerate_launch
from helpers.logprobs import teacher_forced_logprobs
from helpers.ports import start_on_some_port
from helpers.tiny_model import tiny_model
from safetensors.torch import load_file

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS, IM_END
from grpo_audio.recipe.schema import TinyModelSpec
from grpo_audio.rollout.backbone_export import backbone_weights, export_backbone
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings
from grpo_audio.rollout.serve import server_command
from grpo_audio.rollout.vllm_engine import VLLMRolloutEngine
from grpo_audio.rollout.vllm_inprocess import InProcessVLLM
from grpo_audio.rollout.vllm_server import VLLMServerClient, VLLMServerError

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

SPEC = TinyModelSpec(hidden_size=128, num_heads=4, num_kv_heads=2, intermediate_size=256)
TINY_OVERRIDES = ["model.tiny.hidden_size=128", "model.tiny.num_heads=4", "model.tiny.intermediate_size=256"]
# A short training run on the CPU engine (float32 like the trainer, eager: no compile time)
VLLM_TRAIN = [
    "data.synthetic.num_questions=8",
    "rollout.engine=vllm",
    "rollout.vllm.dtype=float32",
    "rollout.vllm.enforce_eager=true",
    "rollout.vllm.max_model_len=1024",
    "rollout.max_completion_length=12",
]
ATOL = 2e-4  # float32 on both sides; vLLM's CPU kernels sum in another order than torch's


@pytest.fixture(scope="module")
def model(tokenizer):
    model = tiny_model(tokenizer, SPEC)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    return model


@pytest.fixture(scope="module")
def backend(model, tmp_path_factory):
    backbone = export_backbone(model, tmp_path_factory.mktemp("backbone"))
    start = time.perf_counter()
    backend = InProcessVLLM.start(backbone, seed=0, dtype="float32", max_model_len=1024, enforce_eager=True)
    print(f"\nin-process vLLM engine started in {time.perf_counter() - start:.1f} s")
    return backend


def make_engine(backend, model, tokenizer, **sampling):
    """A fresh engine (fresh seed counters) over the shared backend."""
    return VLLMRolloutEngine(
        backend,
        SamplingSettings(**{"max_new_tokens": 12, **sampling}),
        stop_token_ids=list(model.generation_config.eos_token_id),
        pad_token_id=tokenizer.pad_token_id,
        audio_marker_ids=tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS)),
        text_vocab_size=model.config.audio_token_index,
        seed=0,
    )


def rows(model, groups):
    """Rows for [(prompt ids, audio seed, count), ...]; each prompt has 3 placeholders and its own clip."""
    h = model.config.llm_config.hidden_size
    ids, audio = [], []
    for prompt, audio_seed, count in groups:
        clip = torch.randn(3, h, generator=torch.Generator().manual_seed(audio_seed))
        ids += [list(prompt)] * count
        audio += [clip] * count
    return ids, AudioRows(audio_embeds=torch.stack(audio))


def prompts(model):
    p = model.config.audio_placeholder_token_id
    return [[1, 2, p, p, p, 5, 6, 7], [1, 2, p, p, p, 40, 41], [9, p, p, p, 5, 6, 7, 8, 9, 10]]


def check_against_teacher_forcing(model, tokenizer, ids, audio, result, **processing):
    markers = tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    for i, completion in enumerate(result.completion_ids):
        embeds = model.prompt_embeddings(torch.tensor([ids[i]]), audio_embeds=audio.audio_embeds[i : i + 1])[0]
        reference = teacher_forced_logprobs(
            model, embeds, completion, first_banned=model.config.audio_token_index, banned=markers, **processing
        )
        assert len(result.logprobs[i]) == len(completion)
        torch.testing.assert_close(torch.tensor(result.logprobs[i]), torch.tensor(reference), atol=ATOL, rtol=0)


def test_grouped_sampling_gives_g_completions_per_prompt_in_row_order(backend, model, tokenizer):
    a, b, c = prompts(model)
    # G = 4, with the middle group split as it can be across processes (2 + 2 of prompt b around prompt c)
    ids, audio = rows(model, [(a, 0, 4), (b, 1, 2), (c, 2, 4), (b, 1, 2)])
    engine = make_engine(backend, model, tokenizer, temperature=1.0)
    result = engine.generate(model, ids, audio)
    assert len(result.completion_ids) == len(ids) == 12
    assert len({tuple(c) for c in result.completion_ids[:4]}) > 1  # G different samples, not one copied
    for reason, completion in zip(result.finish_reasons, result.completion_ids, strict=True):
        stops = [t for t in completion if t in engine.stop_token_ids]
        assert (reason, stops) in (("length", []), ("stop", [completion[-1]]))
        assert reason == "stop" or len(completion) == 12
    # every row's log-probs are those of its own prompt: a row laid out under the wrong prompt would not match
    check_against_teacher_forcing(model, tokenizer, ids, audio, result, temperature=1.0)
    # same run seed, step and batch: the same samples; the next call of the step: others
    again = make_engine(backend, model, tokenizer, temperature=1.0).generate(model, ids, audio)
    assert again.completion_ids == result.completion_ids
    assert engine.generate(model, ids, audio).completion_ids != result.completion_ids


def test_sampled_logprobs_match_hf_teacher_forcing_after_temperature_and_top_k(backend, model, tokenizer):
    ids, audio = rows(model, [(p, i, 4) for i, p in enumerate(prompts(model))])
    engine = make_engine(backend, model, tokenizer, temperature=0.7, top_k=20, max_new_tokens=16)
    result = engine.generate(model, ids, audio)
    check_against_teacher_forcing(model, tokenizer, ids, audio, result, temperature=0.7, top_k=20)


def test_greedy_matches_the_hf_engine(backend, model, tokenizer):
    ids, audio = rows(model, [(p, i, 1) for i, p in enumerate(prompts(model))])
    vllm_result = make_engine(backend, model, tokenizer, do_sample=False, max_new_tokens=16).generate(
        model, ids, audio
    )
    hf = HFRolloutEngine(
        SamplingSettings(max_new_tokens=16, do_sample=False),
        list(model.generation_config.eos_token_id),
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS)),
    )
    hf_result = hf.generate(model, ids, audio)
    assert vllm_result.completion_ids == hf_result.completion_ids
    assert vllm_result.finish_reasons == hf_result.finish_reasons


def test_text_only_vocabulary_is_respected(backend, model, tokenizer):
    # The fresh tiny model's distribution is nearly flat, so ~10 % of unmasked draws would be speech ids
    ids, audio = rows(model, [(p, i, 8) for i, p in enumerate(prompts(model))])
    markers = set(tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS)))
    masked = make_engine(backend, model, tokenizer, temperature=1.0, max_new_tokens=16)
    produced = {t for row in masked.generate(model, ids, audio).completion_ids for t in row}
    assert max(produced) < model.config.audio_token_index and not produced & markers
    unmasked = make_engine(backend, model, tokenizer, temperature=1.0, max_new_tokens=16, text_only=False)
    produced = {t for row in unmasked.generate(model, ids, audio).completion_ids for t in row}
    assert max(produced) >= model.config.audio_token_index  # the check above could have failed


def push_token(model, prompt_embeds: torch.Tensor, token: int, amount: float) -> None:
    """Raise ``token``'s logit at the prompt's last position by ``amount`` (move its LM-head row along the final
    hidden state there), and perturb a decoder layer so that cached prompt KV would be stale."""
    with torch.no_grad():
        hidden = model.model(inputs_embeds=prompt_embeds[None]).last_hidden_state[0, -1]
        model.lm_head.weight[token] += amount * hidden / hidden.dot(hidden)
        model.model.language_model.layers[0].mlp.down_proj.weight.mul_(1.5)


def long_prompt(model) -> list[int]:
    """Two KV-cache blocks long (128 tokens each on CPU), so that vLLM's prefix cache keeps it between requests."""
    p = model.config.audio_placeholder_token_id
    return [1, 2, p, p, p, *(10 + i % 250 for i in range(260))]


def test_audio_length_prompts_beyond_one_scheduler_step(backend, model, tokenizer):
    # 64 rows x 220 prompt tokens > the 4096-token step budget: vLLM 0.32 on CPU used to split a prefill across
    # steps here and crash on seeded requests (the engine turns chunked prefill off on CPU)
    p = model.config.audio_placeholder_token_id
    long_prompts = [[1, 2, p, p, p, *(10 + (i * 31 + k) % 250 for k in range(215))] for i in range(8)]
    ids, audio = rows(model, [(prompt, i, 8) for i, prompt in enumerate(long_prompts)])
    result = make_engine(backend, model, tokenizer, temperature=1.0, max_new_tokens=4).generate(model, ids, audio)
    assert len(result.completion_ids) == 64
    check_against_teacher_forcing(model, tokenizer, ids, audio, result, temperature=1.0)


def test_weight_sync_moves_the_engine_with_the_trainer(backend, model, tokenizer):
    trained = copy.deepcopy(model)
    ids, audio = rows(model, [(long_prompt(model), 0, 8)])
    engine = make_engine(backend, trained, tokenizer, temperature=1.0, max_new_tokens=6)
    greedy = make_engine(backend, trained, tokenizer, do_sample=False, max_new_tokens=1)
    before = greedy.generate(trained, ids[:1], audio).completion_ids[0][0]
    token = 100 if before != 100 else 101
    embeds = trained.prompt_embeddings(torch.tensor(ids[:1]), audio_embeds=audio.audio_embeds[:1])[0]
    push_token(trained, embeds, token, amount=25.0)
    try:
        assert not engine.sync_weights(trained, 0)  # same optimizer step: nothing to push
        assert greedy.generate(trained, ids[:1], audio).completion_ids[0][0] == before
        start = time.perf_counter()
        assert engine.sync_weights(trained, 1)
        print(f"\nweight sync (in-process reload_weights) took {time.perf_counter() - start:.3f} s")
        greedy.sync_weights(trained, 1)
        assert greedy.generate(trained, ids[:1], audio).completion_ids[0][0] == token
        result = engine.generate(trained, ids, audio)
        assert sum(c[0] == token for c in result.completion_ids) >= 6  # its probability is now ~1
        first = [lp[0] for lp, c in zip(result.logprobs, result.completion_ids, strict=True) if c[0] == token]
        assert min(first) > -0.1
        # the same prompt again: stale prefix-cache KV (old layer 0) would break this match
        check_against_teacher_forcing(trained, tokenizer, ids, audio, result, temperature=1.0)
    finally:
        engine.sync_weights(model, 2)  # give the module's engine its original weights back
    check_against_teacher_forcing(model, tokenizer, ids, audio, engine.generate(model, ids, audio), temperature=1.0)


def test_weight_sync_merges_lora(backend, model, tokenizer):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=16, target_modules=r".*language_model\..*\.(q_proj|v_proj|up_proj)$")
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:  # B starts at zero: give the adapters an effect
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    ids, audio = rows(model, [(p, i, 4) for i, p in enumerate(prompts(model))])
    engine = make_engine(backend, model, tokenizer, temperature=1.0)
    try:
        assert engine.sync_weights(peft_model, 1)
        result = engine.generate(peft_model, ids, audio)
        check_against_teacher_forcing(peft_model, tokenizer, ids, audio, result, temperature=1.0)
        with pytest.raises(AssertionError):  # and the adapters matter: the base model gives other log-probs
            check_against_teacher_forcing(model, tokenizer, ids, audio, result, temperature=1.0)
    finally:
        engine.sync_weights(model, 2)


def test_cpu_attention_head_size_is_checked_before_start(tokenizer):
    from vllm.platforms import current_platform

    from grpo_audio.rollout.factory import RolloutEngineError, check_head_size

    if not current_platform.is_cpu():
        pytest.skip("the head-size limit is the CPU backend's")
    default_tiny = tiny_model(tokenizer)  # hidden 64 / 4 heads = 16
    with pytest.raises(RolloutEngineError, match=r"supports head sizes \[32, 64.*this backbone's is 16"):
        check_head_size(default_tiny)
    check_head_size(tiny_model(tokenizer, SPEC))


@pytest.mark.slow
def test_two_step_train_with_the_vllm_engine(tmp_path):
    run = tmp_path / "run"
    overrides = [
        f"run.output_dir={run}",
        *VLLM_TRAIN,
        "trainer.max_steps=2",
        "trainer.learning_rate=1e-3",
        # every processing step on: the trainer must score under vLLM's own processed distribution
        "rollout.temperature=0.7",
        "rollout.top_k=20",
        "rollout.top_p=0.9",
        # and the passes packed by tokens without padding (grpo_audio/train/token_budget.py): still exact
        "trainer.max_tokens_per_microbatch=64",
        "trainer.padding_free=true",  # laid end to end in one token row each: exact too
        *TINY_OVERRIDES,
    ]
    argv = [sys.executable, "-m", "grpo_audio", "train", *[x for o in overrides for x in ("--set", o)]]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    print(f"\ngrpo-audio train (2 steps, vLLM engine) took {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stderr[-4000:]
    assert "engine=vllm" in done.stdout
    assert "TRL currently supports vLLM versions" not in done.stderr  # silenced: the harness runs its own engine
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["global_step"] == 2
    assert (run / "vllm_backbone" / "config.json").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:  # TRL's importance-sampling correction ran on the engine's log-probs, and found them equal
        low, high = (m[f"sampling/importance_sampling_ratio/{k}"] for k in ("min", "max"))
        assert 1 - 1e-4 < low <= high < 1 + 1e-4
        assert m["sampling/sampling_logp_difference/max"] < 1e-5  # measured: 4.8e-7 (float32 on both sides)
        assert 0 < m["text_only/outside_mass"] < 1
        assert m["microbatch/chunks"] >= 2
    assert "time/weight_sync_s" not in steps[0] and steps[1]["time/weight_sync_s"] > 0  # synced after step 1
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert len(rollouts) == 2 * 8 and all(r["finish_reason"] in ("stop", "length") for r in rollouts)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["covo_audio", "qwen2_audio", "qwen2_5_omni_thinker"])
def test_lora_only_sync_sends_the_adapter_and_stays_exact(tmp_path, family):
    """model.lora with the colocated engine: the engine holds the base backbone and samples with the adapter each
    sync writes (vLLM's LoRA support), the sync moves the adapter's bytes only, and the trainer's log-probs still
    equal the engine's (the adapter is non-zero from step 2 on: the high learning rate moves B at step 1). For both
    families: the engine takes prompt embeddings on the exported Qwen2 backbone, whichever audio model made them."""
    run = tmp_path / "run"
    overrides = [
        f"run.output_dir={run}",
        f"model.family={family}",
        *VLLM_TRAIN,
        "trainer.max_steps=3",
        "trainer.learning_rate=5e-2",
        "model.lora={r: 4, alpha: 16, target_modules: [q_proj, v_proj, up_proj]}",
        'rewards.terms=[{name: "helpers.mixed_signal:half_informative", label: mixed}]',  # groups with variance
        *TINY_OVERRIDES,
    ]
    argv = [sys.executable, "-m", "grpo_audio", "train", *[x for o in overrides for x in ("--set", o)]]
    tests = Path(__file__).resolve().parent
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward" in m]
    adapters = sorted((run / "vllm_lora" / "process-0").iterdir())
    assert [p.name for p in adapters] == ["v2", "v3"]  # one version per sync, the one before last kept
    adapter_bytes = (adapters[-1] / "adapter_model.safetensors").stat().st_size
    backbone_bytes = sum(p.stat().st_size for p in (run / "vllm_backbone").glob("*.safetensors"))
    assert [m["weight_sync/bytes"] for m in steps] == [adapter_bytes] * 3  # the first sync sends the step-0 adapter
    assert adapter_bytes < backbone_bytes / 10
    for m in steps:  # exact: the engine's LoRA kernels give the trainer's log-probs
        assert m["sampling/sampling_logp_difference/max"] < 1e-5, m
        low, high = (m[f"sampling/importance_sampling_ratio/{k}"] for k in ("min", "max"))
        assert 1 - 1e-4 < low <= high < 1 + 1e-4
    config = json.loads((adapters[-1] / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 4  # the trainer's scaling (16 / 4) is inside lora_B
    adapter = load_file(adapters[-1] / "adapter_model.safetensors")
    assert max(t.abs().max().item() for k, t in adapter.items() if "lora_B" in k) > 1e-3  # the adapter acts


@pytest.mark.slow
def test_two_processes_each_with_a_colocated_engine(tmp_path):
    """accelerate launch with 2 CPU processes and rollout.vllm.mode colocate: one engine per process (vLLM's
    external_launcher), one backbone export written by process 0, weights pushed into both engines each step."""
    run = tmp_path / "run"
    overrides = [
        f"run.output_dir={run}",
        *VLLM_TRAIN,
        "trainer.per_device_train_batch_size=4",
        "trainer.max_steps=2",
        "trainer.learning_rate=1e-3",
        *TINY_OVERRIDES,
    ]
    repo = Path(__file__).resolve().parents[1]
    argv = [
        *accelerate_launch(),
        "-m",
        "grpo_audio",
        "train",
        *[x for o in overrides for x in ("--set", o)],
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    start = time.perf_counter()
    done = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=1200, env=env)
    print(f"\ngrpo-audio train (2 processes, 2 steps, colocated engines) took {time.perf_counter() - start:.1f} s")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-6000:]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["processes"] == 2
    assert (run / "vllm_backbone" / "config.json").is_file()
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({(r["step"], r["rank"]) for r in rollouts}) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "reward" in m]
    assert "time/weight_sync_s" not in steps[0] and steps[1]["time/weight_sync_s"] > 0
    for m in steps:
        assert 0.0 < m["sampling/importance_sampling_ratio/min"] <= m["sampling/importance_sampling_ratio/max"]


# ---- server mode: a separate `vllm serve` process ----------------------------------------------------------------


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    """A vLLM OpenAI-compatible server on CPU, started with the command `grpo-audio serve-rollouts` runs
    (``grpo_audio.rollout.serve.server_command``: the required flags and the weight receiver) plus CPU options."""
    backbone = export_backbone(model, tmp_path_factory.mktemp("server_backbone"))
    log = tmp_path_factory.mktemp("server_log") / "server.log"

    def command(port: int) -> list[str]:
        options = ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
        return server_command(str(backbone), [*options, "--max-model-len", "1024"])

    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    start = time.perf_counter()
    # vLLM binds the port itself: a port taken between our pick and its bind makes it exit, and it is started again
    process, url = start_on_some_port(command, env, log, "/v1/models", timeout_s=600)
    try:
        print(f"\nvllm serve started in {time.perf_counter() - start:.1f} s")
        yield url, backbone
    finally:
        process.terminate()
        process.wait(timeout=60)


@pytest.fixture(scope="module")
def lora_server(model, tmp_path_factory):
    """A second server, started for LoRA-only sync (`serve-rollouts ... --enable-lora --max-lora-rank 8`)."""
    backbone = export_backbone(model, tmp_path_factory.mktemp("lora_server_backbone"))
    log = tmp_path_factory.mktemp("lora_server_log") / "server.log"

    def command(port: int) -> list[str]:
        options = ["--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager"]
        lora = ["--enable-lora", "--max-lora-rank", "8", "--max-loras", "1"]
        return server_command(str(backbone), [*options, *lora, "--max-model-len", "1024"])

    env = {**os.environ, "VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    process, url = start_on_some_port(command, env, log, "/v1/models", timeout_s=600)
    try:
        yield url, backbone
    finally:
        process.terminate()
        process.wait(timeout=60)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_engine(url, backbone, model, tokenizer, weight_sync="channel", lora_rank=None, **sampling):
    return VLLMRolloutEngine(
        VLLMServerClient(url, backbone, weight_sync=weight_sync, sync_port=free_port(), lora_rank=lora_rank),
        SamplingSettings(**{"max_new_tokens": 12, **sampling}),
        stop_token_ids=list(model.generation_config.eos_token_id),
        pad_token_id=tokenizer.pad_token_id,
        audio_marker_ids=tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS)),
        text_vocab_size=model.config.audio_token_index,
        seed=0,
        synced_step=None,
    )


def test_server_mode_samples_groups_and_matches_teacher_forcing(server, model, tokenizer):
    url, backbone = server
    a, b, c = prompts(model)
    ids, audio = rows(model, [(a, 0, 4), (b, 1, 4), (c, 2, 4)])
    engine = server_engine(url, backbone, model, tokenizer, temperature=0.8, top_k=30)
    assert engine.sync_weights(model, 0)  # server weights of unknown origin: pushed before the first rollout
    result = engine.generate(model, ids, audio)
    assert len(result.completion_ids) == 12
    produced = {t for row in result.completion_ids for t in row}
    assert max(produced) < model.config.audio_token_index
    check_against_teacher_forcing(model, tokenizer, ids, audio, result, temperature=0.8, top_k=30)
    greedy = server_engine(url, backbone, model, tokenizer, do_sample=False, max_new_tokens=16)
    greedy.synced_step = 0
    singles, single_audio = rows(model, [(p, i, 1) for i, p in enumerate(prompts(model))])
    hf = HFRolloutEngine(
        SamplingSettings(max_new_tokens=16, do_sample=False),
        list(model.generation_config.eos_token_id),
        tokenizer.pad_token_id,
        tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS)),
    )
    hf_result = hf.generate(model, singles, single_audio)
    assert greedy.generate(model, singles, single_audio).completion_ids == hf_result.completion_ids


@pytest.mark.parametrize("weight_sync", ["channel", "disk"])
def test_server_mode_weight_sync_moves_the_server_with_the_trainer(server, model, tokenizer, weight_sync):
    """'channel': the tensors streamed over gloo into the server's worker, nothing written (the backbone directory
    keeps its files); 'disk': the directory rewritten and reloaded. Either way the server then samples from the
    trained weights, and its log-probs are the trainer's."""
    url, backbone = server
    trained = copy.deepcopy(model)
    ids, audio = rows(model, [(long_prompt(model), 1, 4)])
    engine = server_engine(url, backbone, trained, tokenizer, weight_sync, temperature=1.0, max_new_tokens=6)
    engine.synced_step = 0
    embeds = trained.prompt_embeddings(torch.tensor(ids[:1]), audio_embeds=audio.audio_embeds[:1])[0]
    push_token(trained, embeds, 100, amount=25.0)
    files = {p: p.stat().st_mtime_ns for p in backbone.glob("*.safetensors")}
    tensor_bytes = sum(t.numel() * t.element_size() for _, t in backbone_weights(trained))
    try:
        start = time.perf_counter()
        assert engine.sync_weights(trained, 1)
        print(f"\nweight sync ({weight_sync}) took {time.perf_counter() - start:.3f} s")
        moved = engine.backend.last_sync_bytes
        if weight_sync == "channel":
            assert moved == tensor_bytes  # float32 server: every backbone tensor once, as is
            assert {p: p.stat().st_mtime_ns for p in backbone.glob("*.safetensors")} == files  # nothing written
        else:
            assert moved == sum(p.stat().st_size for p in backbone.glob("*.safetensors")) > tensor_bytes
        result = engine.generate(trained, ids, audio)
        assert sum(c[0] == 100 for c in result.completion_ids) >= 3
        check_against_teacher_forcing(trained, tokenizer, ids, audio, result, temperature=1.0)
    finally:
        engine.sync_weights(model, 2)


@pytest.mark.parametrize("weight_sync", ["channel", "disk"])
def test_server_mode_lora_only_sync_sends_the_base_once_then_the_adapter(lora_server, model, tokenizer, weight_sync):
    from peft import LoraConfig, get_peft_model

    url, backbone = lora_server
    config = LoraConfig(r=4, lora_alpha=16, target_modules=r".*language_model\..*\.(q_proj|v_proj|up_proj)$")
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    gen = torch.Generator().manual_seed(0)
    adapter_b = [p for n, p in peft_model.named_parameters() if "lora_B" in n]
    base_bytes = sum(t.numel() * t.element_size() for _, t in backbone_weights(model))
    ids, audio = rows(model, [(p, i, 4) for i, p in enumerate(prompts(model))])
    engine = server_engine(url, backbone, peft_model, tokenizer, weight_sync, lora_rank=4, temperature=1.0)
    for step in (1, 2):  # a new adapter each step
        with torch.no_grad():
            for param in adapter_b:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        adapter_bytes = sum(p.numel() * p.element_size() for n, p in peft_model.named_parameters() if "lora_" in n)
        assert engine.sync_weights(peft_model, step)
        moved = engine.backend.last_sync_bytes
        if weight_sync == "disk":  # the base goes as the rewritten files
            base_bytes = sum(p.stat().st_size for p in backbone.glob("*.safetensors"))
        assert moved == (base_bytes + adapter_bytes if step == 1 else adapter_bytes)  # the base once
        result = engine.generate(peft_model, ids, audio)
        check_against_teacher_forcing(peft_model, tokenizer, ids, audio, result, temperature=1.0)
    with pytest.raises(AssertionError):  # the adapter matters: the base model gives other log-probs
        check_against_teacher_forcing(model, tokenizer, ids, audio, result, temperature=1.0)


def test_a_trainer_whose_channel_another_replaced_is_told_at_once(server, model):
    """One server serves one training run: when a second trainer opens its channel, the first one's next sync fails
    at once with the reason, instead of waiting for the channel's timeout."""
    url, backbone = server
    first = VLLMServerClient(url, backbone, sync_port=free_port())
    first.load_weights(model)
    second = VLLMServerClient(url, backbone, sync_port=free_port())
    second.load_weights(model)
    start = time.perf_counter()
    with pytest.raises(VLLMServerError, match=r"another trainer opened one on this server since"):
        first.load_weights(model)
    assert time.perf_counter() - start < 60
    second.load_weights(model)  # the second trainer's channel still works


def test_a_server_without_lora_is_refused_for_lora_only_sync(server):
    url, backbone = server
    with pytest.raises(VLLMServerError, match=r"runs without LoRA .*--enable-lora --max-lora-rank 8`"):
        VLLMServerClient(url, backbone, sync_port=free_port(), lora_rank=4)


@pytest.mark.slow
def test_dynamic_sampling_with_the_vllm_engine_replays_the_engines_logprobs(tmp_path):
    """Refill rounds sample with vLLM, and the chosen rollouts' engine log-probs reach TRL's importance-sampling
    correction unchanged (the ratio stays 1: the replayed log-probs belong to the replayed tokens)."""
    run = tmp_path / "run"
    tests = Path(__file__).resolve().parent
    overrides = [
        f"run.output_dir={run}",
        *VLLM_TRAIN,
        "trainer.max_steps=2",
        "trainer.learning_rate=1e-3",
        "rollout.temperature=0.7",
        'rewards.terms=[{name: "helpers.mixed_signal:half_informative", label: mixed}]',
        "rollout.dynamic_sampling.enabled=true",
        "rollout.dynamic_sampling.max_extra_rounds=2",
        *TINY_OVERRIDES,
    ]
    argv = [sys.executable, "-m", "grpo_audio", "train", *[x for o in overrides for x in ("--set", o)]]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": os.pathsep.join([str(tests), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    steps = [
        m for m in (json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()) if "reward" in m
    ]
    assert [m["step"] for m in steps] == [1, 2]
    for m in steps:
        low, high = (m[f"sampling/importance_sampling_ratio/{k}"] for k in ("min", "max"))
        assert 1 - 1e-4 < low <= high < 1 + 1e-4
        assert m["dynamic_sampling/groups_generated"] >= 2
    rollouts = [json.loads(line) for line in (run / "rollouts.jsonl").read_text().splitlines()]
    assert sum(m["dynamic_sampling/groups_generated"] for m in steps) * 4 == len(rollouts)
    assert any(r["dropped"] for r in rollouts)
