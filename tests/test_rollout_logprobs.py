"""Sampled-token log-probs: the HF engine's optional ones match teacher forcing, and the trainer feeds an engine's
log-probs to TRL's importance-sampling correction when the engine is vLLM (tests/test_exact_logprobs.py checks that
the trainer's own pass equals them)."""

import pytest
import torch
from helpers.logprobs import teacher_forced_logprobs

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS
from grpo_audio.rollout.base import RolloutResult
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings
from grpo_audio.train import build as train_build
from grpo_audio.train import run as training


def test_hf_engine_returns_no_logprobs_by_default(tokenizer, model):
    engine = HFRolloutEngine(SamplingSettings(max_new_tokens=4), [tokenizer.eos_token_id], tokenizer.pad_token_id, [])
    p = model.config.audio_placeholder_token_id
    result = engine.generate(model, [[1, p, 5]], AudioRows(audio_embeds=torch.randn(1, 1, 64)))
    assert result.logprobs is None


def test_hf_engine_logprobs_are_the_processed_distribution(tokenizer, model):
    markers = tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    sampling = SamplingSettings(max_new_tokens=10, temperature=0.8, top_k=20, return_logprobs=True)
    engine = HFRolloutEngine(sampling, [tokenizer.eos_token_id], tokenizer.pad_token_id, markers)
    p = model.config.audio_placeholder_token_id
    prompts = [[1, 2, p, p, 5, 6], [1, 2, p, p, 7], [9, p, p, 5]]  # different lengths: left padding inside
    audio = AudioRows(audio_embeds=torch.randn(3, 2, 64, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    result = engine.generate(model, prompts, audio)
    for i, (prompt, completion) in enumerate(zip(prompts, result.completion_ids, strict=True)):
        assert len(result.logprobs[i]) == len(completion)
        embeds = model.prompt_embeddings(torch.tensor([prompt]), audio_embeds=audio.audio_embeds[i : i + 1])[0]
        reference = teacher_forced_logprobs(
            model,
            embeds,
            completion,
            temperature=0.8,
            top_k=20,
            first_banned=model.config.audio_token_index,
            banned=markers,
        )
        torch.testing.assert_close(torch.tensor(result.logprobs[i]), torch.tensor(reference), atol=1e-4, rtol=1e-4)


def test_seeded_rows_log_probs_are_the_processed_distribution(tokenizer, model):
    markers = tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    sampling = SamplingSettings(max_new_tokens=10, temperature=0.8, top_k=20, return_logprobs=True)
    engine = HFRolloutEngine(sampling, [tokenizer.eos_token_id], tokenizer.pad_token_id, markers, seed=3)
    p = model.config.audio_placeholder_token_id
    prompts = [[1, 2, p, p, 5, 6], [9, p, p, 5]]
    audio = AudioRows(audio_embeds=torch.randn(2, 2, 64, generator=torch.Generator().manual_seed(0)))
    result = engine.generate(model, prompts, audio)
    for i, (prompt, completion) in enumerate(zip(prompts, result.completion_ids, strict=True)):
        embeds = model.prompt_embeddings(torch.tensor([prompt]), audio_embeds=audio.audio_embeds[i : i + 1])[0]
        reference = teacher_forced_logprobs(
            model,
            embeds,
            completion,
            temperature=0.8,
            top_k=20,
            first_banned=model.config.audio_token_index,
            banned=markers,
        )
        torch.testing.assert_close(torch.tensor(result.logprobs[i]), torch.tensor(reference), atol=1e-4, rtol=1e-4)


def test_a_seeded_row_samples_the_same_whatever_batch_it_is_in(tokenizer, model):
    """Row r of the global batch draws from its own stream: alone, or after other rows, it gets the same tokens."""
    p = model.config.audio_placeholder_token_id
    prompts = [[1, 2, p, p, 5, 6], [9, p, p, 5], [3, p, p, 7, 8, 2]]
    audio = AudioRows(audio_embeds=torch.randn(3, 2, 64, generator=torch.Generator().manual_seed(1)))

    def engine():
        sampling = SamplingSettings(max_new_tokens=12)
        return HFRolloutEngine(sampling, [tokenizer.eos_token_id], tokenizer.pad_token_id, [], seed=7)

    whole = engine()
    whole.set_batch_position(step=4, first_row=10)
    together = whole.generate(model, prompts, audio).completion_ids
    split = engine()
    split.set_batch_position(step=4, first_row=12)  # as a second process holding only the last row would
    alone = split.generate(model, prompts[2:], AudioRows(audio_embeds=audio.audio_embeds[2:])).completion_ids
    assert alone[0] == together[2]
    later = engine()
    later.set_batch_position(step=5, first_row=10)  # the next optimizer step draws new numbers
    assert later.generate(model, prompts, audio).completion_ids != together


def test_seeded_sampling_draws_from_the_warped_distribution(tokenizer, model):
    """Gumbel-max is exact sampling: first-token frequencies over many seeded rows match softmax(top-k(logits / T))."""
    p = model.config.audio_placeholder_token_id
    n, top_k, temperature = 3000, 5, 0.7
    sampling = SamplingSettings(max_new_tokens=1, temperature=temperature, top_k=top_k)
    engine = HFRolloutEngine(sampling, [tokenizer.eos_token_id], tokenizer.pad_token_id, [], seed=0)
    audio_row = torch.randn(1, 2, 64, generator=torch.Generator().manual_seed(2))
    first = engine.generate(model, [[1, 2, p, p, 5]] * n, AudioRows(audio_embeds=audio_row.expand(n, -1, -1)))
    first_tokens = torch.tensor([c[0] for c in first.completion_ids])
    counts = torch.bincount(first_tokens, minlength=model.config.llm_config.vocab_size)
    embeds = model.prompt_embeddings(torch.tensor([[1, 2, p, p, 5]]), audio_embeds=audio_row)
    logits = model(inputs_embeds=embeds).logits[0, -1] / temperature
    kept = logits.topk(top_k)
    probs = torch.zeros_like(logits).scatter_(0, kept.indices, kept.values.softmax(-1))
    total_variation = 0.5 * (counts[: probs.numel()] / n - probs).abs().sum().item()
    assert set(counts.nonzero().flatten().tolist()) <= set(kept.indices.tolist())
    assert total_variation < 0.04  # sampling noise at n=3000 over 5 outcomes is about 0.015


class ShiftedLogprobEngine:
    """Samples with the HF engine and reports its log-probs minus ``shift``, so the importance ratio TRL computes
    must come out as exp(shift) times the (mask-only) HF/trainer ratio."""

    name = "shifted"
    returns_logprobs = True  # the trainer turns TRL's importance correction on

    def __init__(self, inner: HFRolloutEngine, shift: float) -> None:
        self.inner = inner
        self.shift = shift
        self.results: list[RolloutResult] = []

    def generate(self, model, prompt_ids, audio):
        result = self.inner.generate(model, prompt_ids, audio)
        result.logprobs = [[x - self.shift for x in row] for row in result.logprobs]
        self.results.append(result)
        return result


def _batch(setup, g):
    return [setup.dataset[i] for i in range(2) for _ in range(g)]


@pytest.mark.slow
def test_importance_sampling_ratio_comes_from_the_engine_logprobs(tiny_recipe, monkeypatch):
    build = train_build.build_rollout_engine

    def shifted(recipe, model, tokenizer, run_dir):
        inner = build(recipe, model, tokenizer, run_dir)
        inner.sampling.return_logprobs = True
        return ShiftedLogprobEngine(inner, shift=0.25)

    monkeypatch.setattr(train_build, "build_rollout_engine", shifted)
    recipe = tiny_recipe(
        "trainer.vllm_importance_sampling_mode=token_truncate", "trainer.vllm_importance_sampling_clip_max=1e6"
    )
    setup = training.build_training(recipe)
    trainer = setup.trainer
    assert trainer.use_vllm and not trainer.args.use_vllm  # the correction is on; TRL built no vLLM of its own
    output = trainer._generate_and_score_completions(_batch(setup, recipe.rollout.num_generations))
    ours = trainer.rollout_engine.results[-1].logprobs
    mask = output["completion_mask"].bool()
    sampling = output["sampling_per_token_logps"]
    for i, row in enumerate(ours):
        assert torch.equal(sampling[i, : len(row)], torch.tensor(row))
    old = output["old_per_token_logps"]
    ratio = output["importance_sampling_ratio"]
    torch.testing.assert_close(ratio[mask], torch.exp(old - sampling)[mask])
    # the trainer scores under the engine's own distribution, so old - sampling is exactly the shift
    torch.testing.assert_close(ratio[mask], torch.full_like(ratio[mask], torch.exp(torch.tensor(0.25)).item()))


@pytest.mark.slow
def test_hf_engine_leaves_the_correction_off(tiny_recipe):
    setup = training.build_training(tiny_recipe())
    assert not setup.trainer.use_vllm
    output = setup.trainer._generate_and_score_completions(_batch(setup, 4))
    assert "importance_sampling_ratio" not in output and "sampling_per_token_logps" not in output


@pytest.mark.slow
def test_drift_from_an_engine_that_samples_outside_the_trainers_top_k_is_logged(tiny_recipe):
    """The engine keeps tokens the trainer's top-k cuts (as another top-p kernel or bf16 logits can near the edge):
    TRL's sampling_logp_difference shows the gap, and sampling/outside_support_frac is the share of sampled tokens
    the policy pass scores outside its support, which then drop out of the importance-corrected loss."""
    import dataclasses

    from grpo_audio.model.sampling import NEG

    recipe = tiny_recipe(
        "rollout.engine_logprobs=true",
        "rollout.top_k=5",
        "trainer.vllm_importance_sampling_mode=token_truncate",
        "trainer.vllm_importance_sampling_clip_max=1e6",
    )
    setup = training.build_training(recipe)
    trainer = setup.trainer
    engine = trainer.rollout_engine
    engine.sampling = dataclasses.replace(engine.sampling, top_k=0)  # the engine no longer cuts to the top 5
    inputs = trainer._generate_and_score_completions(_batch(setup, recipe.rollout.num_generations))
    mask = inputs["completion_mask"].bool()
    outside = (inputs["old_per_token_logps"] <= NEG / 2) & mask
    share = outside.sum().item() / mask.sum().item()
    assert 0 < share < 1
    metrics = trainer._metrics["train"]
    assert metrics["sampling/sampling_logp_difference/max"][-1] > 1e8  # NEG against a real log-prob
    inputs["advantages"] = torch.linspace(-1, 1, inputs["advantages"].numel())
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop otherwise
    trainer.compute_loss(trainer.model, inputs)
    assert metrics["sampling/outside_support_frac"] == [pytest.approx(share)]
