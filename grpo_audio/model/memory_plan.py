"""Memory and shape plan for the real Covo-Audio (7B): parameter counts per part, GPU memory of a LoRA GRPO step.

Parameter counts come from the released config built on the meta device (``build_covo_on_meta``): exact, no weights.

The step estimate is for one GPU holding the whole model (no ZeRO/FSDP sharding), rollouts with HF ``generate``
(``rollout.engine: hf``), then the GRPO update over micro-batches of ``B`` sequences. All sizes are bytes.

Notation: ``h`` hidden size (3584), ``i`` MLP width (18944), ``L`` decoder layers (28), ``n_h`` attention heads (28),
``d_kv`` = KV heads x head dim (4 x 128 = 512), ``V`` vocabulary (168055), ``r`` LoRA rank (8), ``P`` prompt tokens
(~200: 188 ``<|cAUDIO|>`` frames of a 30 s clip + the chat template and question), ``C`` completion tokens (1024),
``T = P + C`` tokens per sequence, ``G`` completions per prompt (8).

Assumptions (each one changes a term below):

* weights bf16, all of them on the GPU (encoder and adapter frozen): ``2 * N_params``;
* LoRA ``r`` on every backbone linear layer (q, k, v, o, gate, up, down; never on ``lm_head``): ``N_lora = r * sum
  (in + out)``. peft keeps adapter weights in fp32 beside bf16 base weights, and Adam keeps two fp32 moments, so
  weight + grad + m + v = ``16 * N_lora``;
* training forward under bf16 autocast (TRL/accelerate ``bf16=True``) with SDPA flash/memory-efficient attention
  (activations linear in ``T``, no ``T x T`` scores). What autograd saves per token per decoder layer (checked in
  ``tests/test_memory_plan.py`` against the tensors a real forward leaves alive, on CPU under CPU autocast; CUDA's
  autocast and SDPA kernels keep the same tensors, which no GPU run here has confirmed)::

      a_layer = 24 h + 8 i + 4 d_kv + 14 r + 4 n_h + 8
              = (2 RMSNorms: fp32 input copy 4h + rstd 4) x 2                        8h + 8
              + bf16 input copies for the 7 LoRA A matmuls (q, k, v, o, gate, up: 2h each; down: 2i)   12h + 2i
              + LoRA A outputs feeding B (r each, bf16) x 7                          14r
              + attention: q, out (2h each), k, v (2 d_kv each), log-sum-exp (4 n_h)  4h + 4 d_kv + 4 n_h
              + MLP: gate, up, silu(gate) (2i each)                                  6i

  = 239,848 bytes (234 KiB) per token per layer for the 7B; frozen base weights make the base matmuls save nothing.
  Outside the layers, per token: RoPE cos/sin ``4 head_dim``; the final RMSNorm saves ``4h + 4`` but the first
  layer's input RMSNorm saves nothing (its input, the spliced embeddings, needs no gradient), so they cancel;
* gradient checkpointing (non-reentrant, TRL's default) keeps only each layer's bf16 input, ``2h`` per token per
  layer (plus the final RMSNorm's ``4h + 4``), and recomputes one layer at a time in the backward;
* log-probs through the harness's chunked head (``grpo_audio.model.sampling.token_logprobs``, the sampling
  distribution's mask, temperature and truncation applied): no ``B x T x V`` logits (that tensor alone would be
  ``4 B C V`` = 0.64 GiB per sequence in fp32). It saves a bf16 copy of the completion positions' hidden states
  and fp32 per-position outputs, ``(2h + 16)`` per completion token; each chunk of ``DEFAULT_CHUNK_ROWS`` positions
  is recomputed in the backward, which holds ``CHUNK_WORKING_SET_COPIES`` float32 ``(chunk, V)`` tensors (measured)
  plus an fp32 gradient of those hidden states, ``4h`` per completion token;
* backward working set: gradients and temporaries of the layer being differentiated. Measured on small Qwen2s with
  the 7B's proportions (``tests/test_memory_plan.py``): 0.56 ``a_layer`` per token above the saved activations, and
  1.57-1.61 ``a_layer`` with checkpointing (the recomputed layer's own activations come back). We use 0.6 and 1.7;
* rollouts: HF ``generate`` for ``R = G`` sequences at once (one prompt's group; a generation batch of k prompts
  multiplies it by k) keeps a KV cache of ``2 (k and v) * L * d_kv * 2 bytes = 57,344`` bytes (56 KiB) per token
  for ``T`` tokens; the prefill's working set is about ``R * P * (6i + 8h)`` (one layer's MLP and norms, no grad) and
  each decoding step's fp32 last-position logits ``4 R V``. With the encoder and adapter frozen, each clip's audio
  features are computed once per step (``P * h * 2`` bytes per clip; the encoder forward of one 30 s segment needs
  ``~1500 * (8 * 1280 + 4 * 5120)`` bytes, 46 MB) and are negligible;
* reference and old-policy log-prob passes (``beta > 0``, ``num_iterations > 1``) run without grad: their working set
  is the prefill's, far below the training peak. With PEFT the reference model is the base with adapters disabled:
  no second copy of the weights;
* not included: the CUDA context and allocator fragmentation (budget 1-3 GiB), an optimizer over non-LoRA
  parameters (a trained adapter adds ``16 * 35.2M`` = 0.52 GiB), vLLM (its own memory pool), multi-GPU sharding.

Peak of a step = ``max(train peak, rollout peak)``, where::

    persistent   = 2 N_params + 16 N_lora
    saved        = B T (L a_layer + 4 head_dim) + B C (2h + 16)                    (no checkpointing)
                 = B T (L 2h + 4h + 4 + 4 head_dim) + B C (2h + 16)               (checkpointing)
    working set  = max(f B T a_layer, 2 * 4096 * 32768 + 4h B C + 2h B T),  f = 0.6 (1.7 with checkpointing)
    train peak   = persistent + saved + working set
    rollout peak = persistent + 57,344 R T + R P (6i + 8h) + 4 R V
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from grpo_audio.model.sampling import CHUNK_WORKING_SET_COPIES, DEFAULT_CHUNK_ROWS

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Measured factors for the backward working set, in units of a_layer per token (see the module docstring)
BACKWARD_FACTOR = 0.6
BACKWARD_FACTOR_CHECKPOINTING = 1.7


BF16 = 2
FP32 = 4
GIB = 2**30


@dataclass(frozen=True)
class ParameterCounts:
    """Parameters per part of the model. ``backbone``: the Qwen2 decoder layers and final norm, without embeddings;
    ``other``: modules no audio GRPO step uses (Qwen2.5-Omni's vision tower), in the weights all the same."""

    encoder: int
    adapter: int
    backbone: int
    embeddings: int
    lm_head: int
    other: int = 0

    @property
    def llm(self) -> int:
        return self.backbone + self.embeddings + self.lm_head

    @property
    def total(self) -> int:
        return self.encoder + self.adapter + self.llm + self.other

    def rows(self, family=None) -> list[tuple[str, int]]:
        """(label, count) per part and the total; labels name the parts as ``family`` names them (Covo-Audio: the
        released checkpoint's names)."""
        if family is None or family.name == "covo_audio":
            labels = [
                "Whisper encoder (`encoder.*`)",
                "audio adapter (`audio_adapter.*`)",
                "Qwen2 backbone: decoder layers + final norm (`llm.model.layers.*`, `llm.model.norm`)",
                "input embeddings (`llm.model.embed_tokens`)",
                "LM head, untied (`llm.lm_head`)",
            ]
        else:
            backbone = family.backbone_module
            labels = [
                f"audio encoder (`{family.encoder_module}.*`)",
                f"audio adapter (`{family.adapter_module}.*`)",
                f"backbone: decoder layers + final norm (`{backbone}.layers.*`, `{backbone}.norm`)",
                f"input embeddings (`{backbone}.embed_tokens`)",
                "LM head (`lm_head`; 0 when tied to the input embeddings)",
            ]
        values = [self.encoder, self.adapter, self.backbone, self.embeddings, self.lm_head]
        rows = list(zip(labels, values, strict=True))
        if self.other:
            rows.append(("not used by audio GRPO (`" + "`, `".join(family.frozen_modules) + "`)", self.other))
        return [*rows, ("total", self.total)]


def count_parameters(model: nn.Module, family=None) -> ParameterCounts:
    """Counts per part of a policy model of ``family`` (``grpo_audio.model.family``; Covo-Audio by default), from
    the family's module paths; works on the meta device. Tied embeddings count once."""
    from grpo_audio.model.family import COVO_AUDIO

    family = family or COVO_AUDIO
    backbone = family.backbone_module + "."
    prefixes = [
        ("adapter", family.adapter_module + "."),  # before the encoder: Omni's adapter lies inside its encoder
        ("encoder", family.encoder_module + "."),
        ("embeddings", backbone + "embed_tokens."),
        ("backbone", backbone),
        ("lm_head", "lm_head."),
        *[("other", path + ".") for path in family.frozen_modules],
    ]
    parts = dict.fromkeys(("encoder", "adapter", "backbone", "embeddings", "lm_head", "other"), 0)
    for name, param in model.named_parameters():  # shared (tied) parameters are listed once
        part = next((part for part, prefix in prefixes if name.startswith(prefix)), None)
        if part is None:
            raise ValueError(f"parameter {name!r} belongs to no known part of {family.title}")
        parts[part] += param.numel()
    return ParameterCounts(**parts)


def lora_parameter_count(model: nn.Module, rank: int = 8, targets: tuple[str, ...] = LORA_TARGETS) -> int:
    """``rank * (in + out)`` summed over the backbone's linear layers named in ``targets`` (from their shapes)."""
    total = 0
    for name, module in model.backbone.named_modules():
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in targets:
            total += rank * (module.in_features + module.out_features)
    return total


def _head_dim(llm_config) -> int:
    return getattr(llm_config, "head_dim", None) or llm_config.hidden_size // llm_config.num_attention_heads


def activation_bytes_per_token_layer(llm_config, lora_rank: int = 8) -> int:
    """``a_layer = 24 h + 8 i + 4 d_kv + 14 r + 4 n_h + 8``: saved for backward per token per decoder layer."""
    h, i, n_h = llm_config.hidden_size, llm_config.intermediate_size, llm_config.num_attention_heads
    d_kv = llm_config.num_key_value_heads * _head_dim(llm_config)
    return 24 * h + 8 * i + 4 * d_kv + 14 * lora_rank + 4 * n_h + 8


def kv_cache_bytes_per_token(llm_config, dtype_bytes: int = BF16) -> int:
    """``2 (k, v) * L * d_kv * dtype_bytes``: one token's KV cache over all layers."""
    d_kv = llm_config.num_key_value_heads * _head_dim(llm_config)
    return 2 * llm_config.num_hidden_layers * d_kv * dtype_bytes


@dataclass(frozen=True)
class StepShape:
    """One GRPO step: ``num_generations`` completions of ``completion_tokens`` for a ``prompt_tokens`` prompt, trained
    in micro-batches of ``micro_batch`` sequences."""

    micro_batch: int = 1
    gradient_checkpointing: bool = False
    num_generations: int = 8
    prompt_tokens: int = 200
    completion_tokens: int = 1024
    lora_rank: int = 8

    @property
    def seq_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each term of the step (see the module docstring for the formulas)."""

    shape: StepShape
    weights: int
    lora_states: int
    saved_activations: int
    working_set: int
    kv_cache: int
    rollout_working_set: int
    terms: dict[str, int] = field(default_factory=dict)

    @property
    def persistent(self) -> int:
        return self.weights + self.lora_states

    @property
    def train_peak(self) -> int:
        return self.persistent + self.saved_activations + self.working_set

    @property
    def rollout_peak(self) -> int:
        return self.persistent + self.kv_cache + self.rollout_working_set

    @property
    def peak(self) -> int:
        return max(self.train_peak, self.rollout_peak)


def estimate_step_memory(config, shape: StepShape, counts: ParameterCounts, n_lora: int) -> MemoryEstimate:
    """The GPU memory of one LoRA GRPO step on one device, from the formulas in the module docstring; ``config`` is
    any family's (its text config is the backbone's)."""
    llm = config.get_text_config()
    h, i, n_layers, vocab = llm.hidden_size, llm.intermediate_size, llm.num_hidden_layers, llm.vocab_size
    b, t, p, c = shape.micro_batch, shape.seq_tokens, shape.prompt_tokens, shape.completion_tokens
    a_layer = activation_bytes_per_token_layer(llm, shape.lora_rank)
    outside_layers = 4 * _head_dim(llm)  # RoPE cos/sin, shared by the layers
    if shape.gradient_checkpointing:
        per_layer = 2 * h
        outside_layers += 4 * h + 4  # the final RMSNorm (without checkpointing it offsets layer 0's input norm)
    else:
        per_layer = a_layer
    head_saved = b * c * (2 * h + 16)
    saved = b * t * (n_layers * per_layer + outside_layers) + head_saved
    factor = BACKWARD_FACTOR_CHECKPOINTING if shape.gradient_checkpointing else BACKWARD_FACTOR
    layer_ws = int(factor * b * t * a_layer)
    chunk = min(b * c, DEFAULT_CHUNK_ROWS)
    head_ws = int(CHUNK_WORKING_SET_COPIES * FP32 * chunk * vocab) + FP32 * h * b * c + BF16 * h * b * t
    r = shape.num_generations
    kv = kv_cache_bytes_per_token(llm) * r * t
    rollout_ws = r * p * (6 * i + 8 * h) + FP32 * r * vocab
    return MemoryEstimate(
        shape=shape,
        weights=BF16 * counts.total,
        lora_states=(FP32 + FP32 + 2 * FP32) * n_lora,
        saved_activations=saved,
        working_set=max(layer_ws, head_ws),
        kv_cache=kv,
        rollout_working_set=rollout_ws,
        terms={"a_layer": a_layer, "layer_working_set": layer_ws, "head_working_set": head_ws},
    )


@dataclass(frozen=True)
class MemoryPlan:
    config: object  # the family's config (CovoAudioConfig, Qwen2AudioConfig, Qwen2_5OmniThinkerConfig)
    counts: ParameterCounts
    lora_params: int
    estimates: list[MemoryEstimate]


def memory_plan(
    micro_batches: tuple[int, ...] = (1, 2, 4, 8),
    lora_rank: int = 8,
    config=None,
    family=None,
    prompt_tokens: int = StepShape.prompt_tokens,
) -> MemoryPlan:
    """Counts of a config built on meta (default: Covo-Audio's released one) and estimates for each micro-batch,
    without and with checkpointing. ``family`` (``grpo_audio.model.family``; Covo-Audio by default) names the model
    class and the parts; ``prompt_tokens``: tokens per prompt (Covo-Audio: 188 placeholders of a 30 s clip + ~12;
    the Qwen families: 750 + the template)."""
    import torch

    from grpo_audio.model.family import COVO_AUDIO

    family = family or COVO_AUDIO
    if config is None:
        from grpo_audio.model.checkpoint_format import released_covo_config

        config = released_covo_config()
    with torch.device("meta"):
        model = family.policy_class()(config)
    counts = count_parameters(model, family)
    n_lora = lora_parameter_count(model, lora_rank)
    estimates = [
        estimate_step_memory(
            config, StepShape(b, ckpt, prompt_tokens=prompt_tokens, lora_rank=lora_rank), counts, n_lora
        )
        for ckpt in (False, True)
        for b in micro_batches
    ]
    return MemoryPlan(config, counts, n_lora, estimates)


def gib(n_bytes: int) -> float:
    return n_bytes / GIB


__all__ = [
    "LORA_TARGETS",
    "MemoryEstimate",
    "MemoryPlan",
    "ParameterCounts",
    "StepShape",
    "activation_bytes_per_token_layer",
    "count_parameters",
    "estimate_step_memory",
    "gib",
    "kv_cache_bytes_per_token",
    "lora_parameter_count",
    "memory_plan",
]
