"""What you sample is what you optimize: the trainer scores every sampled token under the distribution the rollout
engine drew it from (text-only mask, temperature, top-k, top-p), so the importance ratio between them is 1 and
ids the sampler never draws get no gradient."""

import pytest
import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.model.sampling import NEG, SamplingDistribution, token_logprobs
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings, ignored_generation_fields
from grpo_audio.train import run as training


def reference_logprobs(logits, labels, temperature, top_k, top_p, banned):
    """transformers' own warpers after a -inf mask: the distribution the HF engine used to sample from."""
    scores = logits.clone().float()
    scores[:, banned] = float("-inf")
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    scores = warpers(None, scores)
    logp = scores.log_softmax(-1)
    return logp.gather(-1, labels[:, None]).squeeze(-1), logp


@pytest.mark.parametrize(
    ("temperature", "top_k", "top_p"), [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.7, 20, 1.0), (1.0, 0, 0.8), (0.7, 20, 0.9)]
)
def test_processing_equals_transformers_warpers(temperature, top_k, top_p):
    vocab, rows = 300, 64
    logits = torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0)) * 3
    banned = torch.zeros(vocab, dtype=torch.bool)
    banned[250:] = True
    banned[[3, 7]] = True
    dist = SamplingDistribution(temperature, top_k, top_p, first_banned_id=250, banned_ids=(3, 7))
    assert torch.equal(dist.banned_mask(vocab), banned)
    torch.manual_seed(0)
    labels = torch.distributions.Categorical(logits=dist.process(logits)).sample()
    expected, expected_all = reference_logprobs(logits, labels, temperature, top_k, top_p, banned)
    ours = dist.process(logits).log_softmax(-1)
    kept = expected_all > float("-inf")
    assert torch.equal(kept, ours > NEG / 2)  # the same ids survive
    torch.testing.assert_close(ours[kept], expected_all[kept], atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.gather(-1, labels[:, None]).squeeze(-1), expected, atol=1e-6, rtol=0)


def test_token_logprobs_chunks_checkpointing_and_gradients_match_a_plain_computation():
    """Chunked, checkpointed evaluation = one plain (N, V) computation, values and gradients; banned rows of the
    head get exactly zero gradient; entropies are finite and over the processed distribution."""
    gen = torch.Generator().manual_seed(1)
    hidden = torch.randn(37, 16, generator=gen, requires_grad=True)
    weight = (torch.randn(120, 16, generator=gen) * 0.5).requires_grad_()
    dist = SamplingDistribution(0.8, 30, 0.95, first_banned_id=100, banned_ids=(5,))
    labels = torch.distributions.Categorical(logits=dist.process(hidden.detach() @ weight.detach().T)).sample()
    out = token_logprobs(hidden, weight, labels, dist, with_entropy=True, with_outside_mass=True, chunk_rows=8)
    (out.log_probs.sum() + out.entropy.sum()).backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    logp = dist.process(hidden @ weight.T).log_softmax(-1)
    plain = logp.gather(-1, labels[:, None]).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    (plain.sum() + entropy.sum()).backward()
    torch.testing.assert_close(out.log_probs, plain)
    torch.testing.assert_close(out.entropy, entropy)
    torch.testing.assert_close(grads[0], hidden.grad)
    torch.testing.assert_close(grads[1], weight.grad)
    assert torch.isfinite(out.entropy).all()
    banned = dist.banned_mask(120)
    assert torch.count_nonzero(grads[1][banned]) == 0 and torch.count_nonzero(grads[1][~banned]) > 0
    raw = (hidden.detach() @ weight.detach().T) / 0.8
    expected_outside = raw.softmax(-1)[:, banned].sum(-1)
    torch.testing.assert_close(out.outside_mass, expected_outside)


def _exact_setup(tiny_recipe, *overrides):
    """The HF engine returning its sampling log-probs (rollout.engine_logprobs), so that TRL runs its importance
    correction and drift metrics on them against the trainer's own pass on the same tokens."""
    recipe = tiny_recipe(
        "rollout.engine_logprobs=true",
        "trainer.vllm_importance_sampling_mode=token_truncate",
        "trainer.vllm_importance_sampling_clip_max=1e6",
        "rollout.max_completion_length=16",
        *overrides,
    )
    return recipe, training.build_training(recipe)


@pytest.mark.slow
@pytest.mark.parametrize(
    "sampling",
    [
        ("rollout.temperature=1.0",),
        ("rollout.temperature=0.7",),
        ("rollout.temperature=1.0", "rollout.top_k=20"),
        ("rollout.temperature=0.7", "rollout.top_k=20", "rollout.top_p=0.9"),
        ("rollout.temperature=0.7", "rollout.top_k=20", "rollout.top_p=0.9", "trainer.max_tokens_per_microbatch=80"),
        ("rollout.temperature=0.7", "rollout.top_k=20", "rollout.top_p=0.9", "trainer.padding_free=true"),
        ("rollout.temperature=0.7", "rollout.top_k=20", "rollout.top_p=0.9", "model.family=qwen2_audio"),
        # the mel form (the audio tower trains, so it runs inside every pass) with the passes padding-free
        (
            "rollout.temperature=0.7",
            "model.family=qwen2_audio",
            "trainer.padding_free=true",
            "model.freeze_encoder=false",
        ),
        ("rollout.temperature=0.7", "rollout.top_k=20", "rollout.top_p=0.9", "model.family=qwen2_5_omni_thinker"),
        (
            "rollout.temperature=0.7",
            "model.family=qwen2_5_omni_thinker",
            "trainer.padding_free=true",
            "model.freeze_encoder=false",
        ),
    ],
    ids=[
        "T1",
        "T0.7",
        "T1-topk",
        "T0.7-topk-topp",
        "T0.7-topk-topp-token-budget",
        "T0.7-topk-topp-padding-free",
        "qwen2-audio-T0.7-topk-topp",
        "qwen2-audio-padding-free-mel",
        "omni-thinker-T0.7-topk-topp",
        "omni-thinker-padding-free-mel",
    ],  # fmt: skip
)
def test_trainer_logprobs_equal_the_hf_engine_sampling_logprobs(tiny_recipe, sampling):
    recipe, setup = _exact_setup(tiny_recipe, *sampling)
    trainer = setup.trainer
    g = recipe.rollout.num_generations
    output = trainer._generate_and_score_completions([setup.dataset[i] for i in range(2) for _ in range(g)])
    mask = output["completion_mask"].bool()
    engine = output["sampling_per_token_logps"][mask]
    ours = output["old_per_token_logps"][mask]
    assert mask.sum() > 20
    torch.testing.assert_close(ours, engine, atol=1e-5, rtol=0)
    torch.testing.assert_close(output["importance_sampling_ratio"][mask], torch.ones_like(ours), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_banned_ids_get_no_gradient_and_the_outside_mass_is_logged(tiny_recipe):
    recipe, setup = _exact_setup(tiny_recipe, "rollout.temperature=1.0")
    trainer = setup.trainer
    g = recipe.rollout.num_generations
    inputs = trainer._generate_and_score_completions([setup.dataset[i] for i in range(2) for _ in range(g)])
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].numel())  # a signal whatever the rewards
    model = trainer.model
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    trainer.compute_loss(model, inputs).backward()
    grad = model.lm_head.weight.grad
    banned = trainer.sampling.banned_mask(grad.size(0))
    assert banned.sum() > 0 and torch.count_nonzero(grad[banned]) == 0
    assert torch.count_nonzero(grad[~banned]) > 0
    logged = trainer._metrics["train"]["text_only/outside_mass"]
    assert len(logged) == 1 and 0.0 < logged[0] < 1.0  # a random tiny model puts real mass on speech ids
    assert trainer._metrics["train"]["sampling/outside_support_frac"] == [0.0]  # every sampled token in support


def test_a_checkpoints_generation_config_does_not_reach_the_rollouts(tokenizer, model):
    """A repetition penalty (or top-p...) in the model's generation config is not applied by the engine: the tokens
    are those of the blank config, and ignored_generation_fields names what was set aside."""
    markers = tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    p = model.config.audio_placeholder_token_id
    prompts = [[1, 2, p, p, 5, 6], [9, p, p, 5]]
    audio = AudioRows(audio_embeds=torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(0)))

    def sample():
        engine = HFRolloutEngine(
            SamplingSettings(max_new_tokens=24, do_sample=False), [tokenizer.eos_token_id], tokenizer.pad_token_id,
            markers,
        )  # fmt: skip
        return engine.generate(model, prompts, audio).completion_ids

    plain = sample()
    assert ignored_generation_fields(model.generation_config) == {}
    model.generation_config.repetition_penalty = 50.0
    model.generation_config.no_repeat_ngram_size = 1
    ignored = ignored_generation_fields(model.generation_config)
    assert ignored == {"repetition_penalty": 50.0, "no_repeat_ngram_size": 1}
    assert any(len(set(c)) < len(c) for c in plain)  # greedy repeats tokens, which those fields would forbid
    assert sample() == plain
    assert model.generation_config.repetition_penalty == 50.0  # set aside for the call only
