"""The 7B memory plan: exact parameter counts, and the activation/KV formulas checked against measured tensors."""

import runpy
import weakref
from pathlib import Path

import pytest
import torch
from helpers.tiny_model import tiny_model, tiny_tokenizer
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from transformers import Qwen2Config, Qwen2Model

from grpo_audio.model.checkpoint_format import build_covo_on_meta, released_covo_config
from grpo_audio.model.memory_plan import (
    BACKWARD_FACTOR,
    BACKWARD_FACTOR_CHECKPOINTING,
    LORA_TARGETS,
    StepShape,
    activation_bytes_per_token_layer,
    count_parameters,
    estimate_step_memory,
    kv_cache_bytes_per_token,
    lora_parameter_count,
    memory_plan,
)
from grpo_audio.model.sampling import CHUNK_WORKING_SET_COPIES, SamplingDistribution, token_logprobs

BENCH = Path(__file__).resolve().parents[1] / "bench" / "memory_plan.py"


@pytest.fixture(scope="module")
def full_size():
    return build_covo_on_meta(released_covo_config())


def test_released_parameter_counts_per_part(full_size):
    counts = count_parameters(full_size)
    d, f, n = 1280, 5120, 32  # whisper-large-v3 encoder
    attn = 4 * d * d + 3 * d  # q, k, v, o; k has no bias
    encoder = (128 * d * 3 + d) + (d * d * 3 + d) + 1500 * d + n * (attn + 4 * d + d * f + f + f * d + d) + 2 * d
    conv, up = d * d * 3 + d, d * 2048 + 2048
    adapter = 2 * (conv + up + 2048 * d + d) + (conv + up + 2048 * 3584 + 3584)
    h, i, kv = 3584, 18944, 512  # Qwen2.5-7B
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    assert counts.encoder == encoder == 636_968_960
    assert counts.adapter == adapter == 35_208_960
    assert counts.backbone == 28 * layer + h == 6_525_621_760
    assert counts.embeddings == counts.lm_head == 168055 * h
    assert counts.total == sum(p.numel() for p in full_size.parameters()) == 8_402_417_920
    assert lora_parameter_count(full_size, rank=8) == 28 * 8 * (2 * (h + h) + 2 * (h + kv) + 3 * (h + i)) == 20_185_088


def test_lora_count_matches_peft():
    from peft import LoraConfig, get_peft_model

    model = tiny_model(tiny_tokenizer())  # get_peft_model changes it in place: not the shared fixture
    expected = lora_parameter_count(model, rank=4)
    pattern = r".*language_model\..*\.(" + "|".join(LORA_TARGETS) + r")$"  # as grpo_audio.train.run.lora_config
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=pattern))
    assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == expected


# --- the activation formula against what autograd really keeps -------------------------------------------------


class _LiveTensors(TorchDispatchMode):
    """Bytes of tensor storages created inside the mode and still alive (current and peak), params excluded."""

    def __init__(self, exclude: set[int]):
        super().__init__()
        self.exclude, self.alive, self.current, self.peak = exclude, {}, 0, 0

    def _freed(self, key, nbytes):
        self.current -= nbytes
        self.alive.pop(key, None)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if not isinstance(tensor, torch.Tensor):
                continue
            storage = tensor.untyped_storage()
            key, nbytes = storage.data_ptr(), storage.nbytes()
            if key in self.alive or key in self.exclude or nbytes == 0:
                continue
            self.alive[key] = weakref.ref(storage, lambda _, k=key, n=nbytes: self._freed(k, n))
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        return out


# Proportioned like Qwen2.5-7B: i / h = 5.29, 1 KV head per 7 query heads
SMALL = dict(hidden_size=224, intermediate_size=1184, num_attention_heads=7, num_key_value_heads=1, vocab_size=512)


def _lora_step(seq_len, layers, checkpointing):
    """(live bytes after the forward, peak during the backward) of a bf16 Qwen2 + fp32 LoRA under bf16 autocast."""
    from peft import LoraConfig, get_peft_model

    config = Qwen2Config(num_hidden_layers=layers, **SMALL)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = Qwen2Model(config).to(torch.bfloat16)
    peft_model = get_peft_model(model, LoraConfig(r=8, target_modules=list(LORA_TARGETS)))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    peft_model.train()
    embeds = torch.randn(1, seq_len, config.hidden_size, dtype=torch.bfloat16)  # spliced embeddings: no grad
    tracker = _LiveTensors({p.untyped_storage().data_ptr() for p in peft_model.parameters()})
    with tracker:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = peft_model(inputs_embeds=embeds).last_hidden_state
        after_forward = tracker.current
        hidden.float().sum().backward()
    return config, after_forward, tracker.peak


@pytest.mark.parametrize("checkpointing", [False, True])
def test_saved_activations_and_backward_working_set_match_the_formula(checkpointing):
    layers = 2
    config, short, _ = _lora_step(64, layers, checkpointing)
    _, long, peak = _lora_step(128, layers, checkpointing)
    h, head_dim = config.hidden_size, config.hidden_size // config.num_attention_heads
    a_layer = activation_bytes_per_token_layer(config, lora_rank=8)
    per_token = (long - short) / 64  # constant terms (autocast's cached weight casts) cancel
    output = 2 * h  # the bf16 last_hidden_state itself is alive too
    if checkpointing:  # layer 0's checkpointed input is `embeds`, made outside the tracker
        expected = (layers - 1) * 2 * h + 4 * h + 4 + 4 * head_dim + output
    else:
        expected = layers * a_layer + 4 * head_dim + output
    assert per_token == pytest.approx(expected, rel=0.03)
    factor = (peak - long) / (128 * a_layer)
    assumed = BACKWARD_FACTOR_CHECKPOINTING if checkpointing else BACKWARD_FACTOR
    assert 0.85 * assumed <= factor <= assumed, factor


def test_kv_cache_formula_matches_a_real_cache():
    config = Qwen2Config(num_hidden_layers=3, **SMALL)
    model = Qwen2Model(config).to(torch.bfloat16).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.zeros(2, 50, dtype=torch.long), use_cache=True).past_key_values
    stored = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
    assert stored == kv_cache_bytes_per_token(config) * 2 * 50


# --- the 7B numbers ---------------------------------------------------------------------------------------------


def test_head_working_set_matches_the_constant():
    """The chunked sampled-token head (mask + temperature + entropies, as in the policy pass) holds at most
    CHUNK_WORKING_SET_COPIES float32 (chunk, V) tensors at its peak, forward and backward together."""
    vocab, hidden_size, rows, chunk = 4096, 64, 512, 128
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, hidden_size, generator=gen, dtype=torch.bfloat16).requires_grad_()
    weight = torch.randn(vocab, hidden_size, generator=gen, dtype=torch.bfloat16)  # frozen head, as with LoRA
    labels = torch.randint(0, 3000, (rows,), generator=gen)
    dist = SamplingDistribution(0.7, first_banned_id=3000, banned_ids=(1, 2))
    exclude = {hidden.untyped_storage().data_ptr(), weight.untyped_storage().data_ptr()}
    with _LiveTensors(exclude) as live:
        out = token_logprobs(hidden, weight, labels, dist, with_entropy=True, with_outside_mass=True, chunk_rows=chunk)
        (out.log_probs.sum() + out.entropy.sum()).backward()
    copies = live.peak / (4 * chunk * vocab)
    assert CHUNK_WORKING_SET_COPIES - 1.5 < copies <= CHUNK_WORKING_SET_COPIES


def test_step_estimate_for_the_7b():
    plan = memory_plan((1, 2, 4, 8))
    assert activation_bytes_per_token_layer(plan.config.llm_config) == 239_848
    assert kv_cache_bytes_per_token(plan.config.llm_config) == 57_344
    by_shape = {(e.shape.micro_batch, e.shape.gradient_checkpointing): e for e in plan.estimates}
    assert len(by_shape) == 8
    one = by_shape[(1, False)]
    assert one.weights == 2 * 8_402_417_920 and one.lora_states == 16 * 20_185_088
    assert one.saved_activations == 1224 * (28 * 239_848 + 4 * 128) + 1024 * (2 * 3584 + 16)
    assert one.kv_cache == 8 * 1224 * 57_344
    for b in (1, 2, 4, 8):  # checkpointing always saves memory, and activations grow linearly with B
        assert by_shape[(b, True)].train_peak < by_shape[(b, False)].train_peak
        assert by_shape[(b, False)].saved_activations == b * one.saved_activations
    assert 23 < by_shape[(1, False)].train_peak / 2**30 < 25  # weights 15.6 GiB + 7.7 GiB of activations
    assert by_shape[(8, False)].peak / 2**30 > 78 > by_shape[(8, True)].peak / 2**30
    longer = estimate_step_memory(
        plan.config, StepShape(completion_tokens=2048), plan.counts, plan.lora_params
    ).saved_activations
    assert longer > one.saved_activations


def test_bench_prints_the_markdown_tables(capsys):
    assert runpy.run_path(str(BENCH), run_name="bench")["main"]([]) == 0
    out = capsys.readouterr().out
    assert "| Whisper encoder (`encoder.*`) | 636,968,960 | 1.19 |" in out
    assert "| total | 8,402,417,920 | 15.65 |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| 1 |", "| 2 |", "| 4 |", "| 8 |"))]
    assert len(rows) == 8


def test_capacity_per_topology_shards_what_each_backend_shards():
    from grpo_audio.model.capacity import Topology, estimate_topology

    plan = memory_plan((1,))
    counts, n_lora = plan.counts, plan.lora_params
    n_train = counts.backbone + counts.embeddings + counts.lm_head

    def persistent(topology):
        return estimate_topology(topology, plan.config, counts, n_lora).persistent

    lora = estimate_topology(Topology("lora", 1, "ddp", True), plan.config, counts, n_lora)
    assert lora.persistent == plan.estimates[0].persistent  # the one-GPU LoRA figure of the memory plan
    full = persistent(Topology("ddp", 8, "ddp", False))
    assert full == 2 * counts.total + 14 * n_train  # bf16 weights, bf16 grads + fp32 master, m, v: replicated
    assert persistent(Topology("z2", 8, "zero2", False)) == int(2 * counts.total + 14 * n_train / 8)
    assert persistent(Topology("z3", 8, "zero3", False)) == int((2 * counts.total + 14 * n_train) / 8)
    # ZeRO-3 rollouts with HF generate gather the full weights; a vLLM server takes the rollout off these GPUs
    z3 = estimate_topology(Topology("z3", 8, "zero3", False), plan.config, counts, n_lora)
    assert z3.rollout_peak > 2 * counts.total and z3.rollout_peak > z3.train_peak
    served = estimate_topology(Topology("z3+vllm", 8, "zero3", False, rollout_gpus=2), plan.config, counts, n_lora)
    assert served.rollout_peak == 0 and served.peak == served.train_peak


@pytest.mark.parametrize("family_name", ["covo_audio", "qwen2_audio", "qwen2_5_omni_thinker"])
def test_each_family_is_counted_by_its_own_parts_and_planned(family_name):
    """The memory plan of any family, from its config on the meta device: every parameter in exactly one part, the
    LoRA count over its backbone, an estimate per micro-batch; the Qwen families' 30 s prompts are longer."""
    from grpo_audio.model.build import build_tokenizer_and_model
    from grpo_audio.model.family import FAMILIES
    from grpo_audio.recipe import load_recipe

    family = FAMILIES[family_name]
    recipe = load_recipe(None, [f"model.family={family_name}"])
    _, model = build_tokenizer_and_model(recipe.model, 0, ["a question"])
    counts = count_parameters(model, family)
    assert counts.total == sum(p.numel() for p in model.parameters())
    assert min(counts.encoder, counts.adapter, counts.backbone, counts.embeddings, counts.lm_head) > 0
    assert (counts.other > 0) == (family_name == "qwen2_5_omni_thinker")  # the thinker's unused vision tower
    labels = [label for label, _ in counts.rows(family)]
    assert labels[-1] == "total" and len(labels) == 6 + (counts.other > 0)
    plan = memory_plan((1, 2), 8, model.config, family, prompt_tokens=800)
    assert plan.counts == counts and plan.lora_params == lora_parameter_count(model, 8) > 0
    assert [e.shape.prompt_tokens for e in plan.estimates] == [800] * 4
    assert plan.estimates[1].peak > plan.estimates[0].peak  # a larger micro-batch needs more


def test_the_bench_plans_a_full_omni_directory_from_its_thinker_config(tmp_path):
    """bench/memory_plan.py --config: a full Qwen2.5-Omni config.json gives the thinker family and its config."""
    import json

    from transformers import Qwen2_5OmniConfig

    checkpoint_config = runpy.run_path(str(BENCH), run_name="bench")["checkpoint_config"]
    path = tmp_path / "config.json"
    path.write_text(json.dumps(Qwen2_5OmniConfig().to_dict()))
    config, family = checkpoint_config(str(path))
    assert family.name == "qwen2_5_omni_thinker" and config.model_type == "qwen2_5_omni_thinker"
    assert config.get_text_config().hidden_size == Qwen2_5OmniConfig().thinker_config.text_config.hidden_size
