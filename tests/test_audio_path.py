"""Audio reaches the model in rollouts and in every log-prob pass (stock TRL silently drops it)."""

import pytest
import torch

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.train.run import build_training


def _count_encoder_calls(model):
    calls = []
    model.model.encoder.register_forward_hook(lambda *_: calls.append(torch.is_grad_enabled()))
    return calls


def test_encoder_runs_in_rollout_and_in_the_loss_when_the_adapter_trains(tiny_recipe):
    setup = build_training(tiny_recipe("model.freeze_adapter=false", "trainer.max_steps=1"))
    calls = _count_encoder_calls(setup.model)
    setup.trainer.train()
    # one no-grad call builds the rollout prompts; one grad-enabled call is the policy's log-prob pass
    assert False in calls, "audio never reached generation"
    assert True in calls, "audio never reached the loss"
    assert setup.featurizer.encoder_calls == 0  # mel form: nothing precomputed


def test_frozen_audio_is_encoded_once_per_batch_and_spliced_into_the_loss(tiny_recipe):
    # 8 questions, 2 per step (8 rows = 2 prompts x G=4): steps 1-4 see 8 new clips, steps 5-6 repeat them
    setup = build_training(tiny_recipe("trainer.max_steps=6"))
    calls = _count_encoder_calls(setup.model)
    placeholder = setup.model.config.audio_placeholder_token_id
    seen = []

    def check_inputs(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        if torch.is_grad_enabled():  # the policy pass of the loss
            seen.append(embeds.detach().clone())

    setup.model.model.language_model.register_forward_pre_hook(check_inputs, with_kwargs=True)
    plain = setup.model.get_input_embeddings().weight[placeholder].detach().clone()
    setup.trainer.train()
    # one encoder call per new clip, each clip encoded once (not once per G copy, not once per pass, not batched
    # with other clips, whose company would change its rounding); repeated clips cost nothing: the encoder and
    # adapter are frozen, so their features cannot change
    assert setup.featurizer.encoder_calls == 8 and setup.featurizer.clips_encoded == 8
    assert calls == [False] * 8  # no encoder work inside the loss: features are reused
    assert seen, "the loss never ran a forward"
    # no row of the policy forward still carries the plain <|cAUDIO|> embedding
    assert not any(torch.isclose(e, plain).all(dim=-1).any() for e in seen)


def test_same_completion_gets_different_logprobs_under_different_audio(tiny_recipe):
    setup = build_training(tiny_recipe())
    trainer, dataset = setup.trainer, setup.dataset
    tok = setup.tokenizer
    by_length = sorted(dataset, key=lambda row: row["prompt"].count("<|cAUDIO|>"))
    a, b = by_length[0], by_length[-1]  # b's clip has at least as many frames as a's prompt needs
    assert a["audio"] != b["audio"]
    completion = tok("<think>listen</think><answer>high</answer>", add_special_tokens=False)["input_ids"]
    prompt = tok(a["prompt"], add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + completion])
    mask = torch.ones_like(ids)

    def logps(path):
        trainer._current_audio = setup.featurizer.rows([path], setup.model, torch.device("cpu"))
        with torch.no_grad():
            out, _, _ = trainer._get_per_token_logps_and_entropies(setup.model, ids, mask, len(completion))
        return out

    first, second, again = logps(a["audio"]), logps(b["audio"]), logps(a["audio"])
    assert torch.equal(first, again)
    assert (first - second).abs().max() > 1e-4


def test_log_prob_pass_without_audio_is_an_error(tiny_recipe):
    setup = build_training(tiny_recipe())
    ids = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(RuntimeError, match="audio for 2 token rows expected, none available"):
        setup.trainer._get_per_token_logps_and_entropies(setup.model, ids, torch.ones_like(ids), 2)
    setup.trainer._current_audio = AudioRows(audio_embeds=torch.zeros(3, 1, 64))
    with pytest.raises(RuntimeError, match="audio for 2 token rows expected, 3 rows available"):
        setup.trainer._get_per_token_logps_and_entropies(setup.model, ids, torch.ones_like(ids), 2)


def test_adapter_gets_its_own_learning_rate(tiny_recipe):
    setup = build_training(tiny_recipe("model.freeze_adapter=false", "model.adapter_learning_rate=5e-2"))
    optimizer = setup.trainer.create_optimizer()
    adapter = {id(p) for n, p in setup.model.named_parameters() if "audio_adapter" in n}
    llm = {id(p) for n, p in setup.model.named_parameters() if "language_model" in n}
    rates = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            rates[id(p)] = group["lr"]
    assert {rates[i] for i in adapter} == {5e-2}
    assert {rates[i] for i in llm} == {1e-3}
    assert not {id(p) for n, p in setup.model.named_parameters() if "encoder" in n} & set(rates)  # frozen


def test_adapter_learning_rate_needs_a_training_adapter(tiny_recipe):
    from grpo_audio.recipe import RecipeError

    with pytest.raises(RecipeError, match="adapter_learning_rate is set but model.freeze_adapter is true"):
        tiny_recipe("model.adapter_learning_rate=5e-2")
