"""The tiny Covo-Audio model: splice, batching, tokenizer, text-only rollouts."""

import pytest
import torch
from helpers.tiny_model import tiny_model, tiny_tokenizer

from grpo_audio.audio.featurizer import AudioRows
from grpo_audio.model.tokenizer import AUDIO_SPECIAL_TOKENS, check_covo_tokens
from grpo_audio.rollout.hf import HFRolloutEngine, SamplingSettings


def _ids(model, n_placeholders, text_ids=(5, 6, 7)):
    p = model.config.audio_placeholder_token_id
    return [1, 2, *([p] * n_placeholders), *text_ids]


def test_tokenizer_is_deterministic_and_carries_covo_tokens(tokenizer):
    again = tiny_tokenizer()
    assert again.get_vocab() == tokenizer.get_vocab()
    ids = check_covo_tokens(tokenizer, "tiny")
    # the audio markers are single special tokens, never split
    for token in AUDIO_SPECIAL_TOKENS:
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [ids[token]]
    assert tokenizer.decode(tokenizer("<think>x</think><answer>high</answer>")["input_ids"]) == (
        "<think>x</think><answer>high</answer>"
    )


def test_tiny_model_init_is_deterministic(tokenizer, model):
    other = tiny_model(tokenizer, seed=0)
    different = tiny_model(tokenizer, seed=1)
    a, b, c = model.state_dict(), other.state_dict(), different.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_released_parameter_layout_inside_the_model(model):
    names = {n for n, _ in model.named_parameters()}
    for i in range(3):
        for part in ("conv1d", "linear1", "linear2"):
            assert f"model.audio_adapter.downsample_layers.{i}.{part}.weight" in names
    assert "model.encoder.conv1.weight" in names and "lm_head.weight" in names
    assert model.lm_head.weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()  # untied


def test_adapter_turns_one_segment_into_188_frames(model):
    out = model.model.encode_segments(torch.randn(2, 128, 3000))
    assert out.shape == (2, 188, model.config.llm_config.hidden_size)


def test_splice_puts_each_rows_frames_in_its_placeholders(model):
    h = model.config.llm_config.hidden_size
    rows = [_ids(model, 3), _ids(model, 4)[:8]]  # 3 and 4 placeholders
    ids = torch.tensor([rows[0] + [0] * (8 - len(rows[0])), rows[1]])
    audio = torch.randn(2, 6, h)
    merged = model.prompt_embeddings(ids, audio_embeds=audio)
    placeholder = ids == model.config.audio_placeholder_token_id
    assert torch.equal(merged[0][placeholder[0]], audio[0, :3])
    assert torch.equal(merged[1][placeholder[1]], audio[1, :4])
    plain = model.get_input_embeddings()(ids)
    assert torch.equal(merged[~placeholder], plain[~placeholder])


def test_too_few_frames_and_missing_audio_are_errors(model):
    ids = torch.tensor([_ids(model, 4)])
    with pytest.raises(ValueError, match="row 0 has 4 <\\|cAUDIO\\|> placeholders but its audio gives only 2"):
        model(input_ids=ids, audio_embeds=torch.zeros(1, 2, model.config.llm_config.hidden_size))
    with pytest.raises(ValueError, match="placeholders but no audio was given"):
        model(input_ids=ids)


def test_batched_mel_forward_equals_per_row(model):
    torch.manual_seed(0)
    feats = torch.randn(3, 2, 128, 3000)
    counts = torch.tensor([1, 2, 1])
    lengths = [7, 190, 50]  # the second row needs frames from its second segment
    width = max(lengths) + 5
    p = model.config.audio_placeholder_token_id
    ids = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for b, n in enumerate(lengths):  # left padding, as in generation
        row = [1, *([p] * n), 5, 6, 7]
        ids[b, width - len(row) :] = torch.tensor(row)
        mask[b, width - len(row) :] = 1
    with torch.no_grad():
        batched = model(input_ids=ids, attention_mask=mask, input_features=feats, audio_segment_counts=counts).logits
        for b in range(3):
            n_tokens = int(mask[b].sum())
            single = model(
                input_ids=ids[b : b + 1, -n_tokens:],
                input_features=feats[b : b + 1, : counts[b]],
                audio_segment_counts=counts[b : b + 1],
            ).logits
            torch.testing.assert_close(batched[b, -n_tokens:], single[0], atol=1e-4, rtol=1e-4)


def test_text_only_rollouts_never_sample_speech_or_audio_marker_ids(tokenizer, model):
    markers = tokenizer.convert_tokens_to_ids(list(AUDIO_SPECIAL_TOKENS))
    # Make the forbidden ids the most likely outputs, so an unmasked sampler would pick them.
    bias = torch.zeros(model.config.llm_config.vocab_size)
    bias[model.config.audio_token_index :] = 50.0
    bias[markers] = 50.0
    original = model.lm_head.forward
    model.lm_head.forward = lambda h: original(h) + bias
    try:
        engine = HFRolloutEngine(
            SamplingSettings(max_new_tokens=16), [tokenizer.eos_token_id], tokenizer.pad_token_id, markers
        )
        h = model.config.llm_config.hidden_size
        torch.manual_seed(0)
        result = engine.generate(model, [_ids(model, 2)] * 4, AudioRows(audio_embeds=torch.randn(4, 2, h)))
        produced = {t for row in result.completion_ids for t in row}
        assert produced and max(produced) < model.config.audio_token_index
        assert not produced & set(markers)
        # and without the mask the same model does sample them (the test would catch a broken mask)
        engine.sampling.text_only = False
        bias[markers] = 0.0  # a sampled <|cAUDIO|> would (rightly) fail the next forward: test speech ids only
        torch.manual_seed(0)
        unmasked = engine.generate(model, [_ids(model, 2)] * 4, AudioRows(audio_embeds=torch.randn(4, 2, h)))
        assert max(t for row in unmasked.completion_ids for t in row) >= model.config.audio_token_index
    finally:
        model.lm_head.forward = original


def test_rollouts_stop_at_endoftext(tokenizer, model):
    eos = tokenizer.eos_token_id
    bias = torch.zeros(model.config.llm_config.vocab_size)
    bias[eos] = 50.0
    original = model.lm_head.forward
    model.lm_head.forward = lambda h: original(h) + bias
    try:
        engine = HFRolloutEngine(SamplingSettings(max_new_tokens=8), [eos], tokenizer.pad_token_id, [])
        h = model.config.llm_config.hidden_size
        result = engine.generate(model, [_ids(model, 2)], AudioRows(audio_embeds=torch.randn(1, 2, h)))
    finally:
        model.lm_head.forward = original
    assert result.completion_ids == [[eos]] and result.finish_reasons == ["stop"]


def test_greedy_generation_with_and_without_batching_agrees(tokenizer, model):
    h = model.config.llm_config.hidden_size
    torch.manual_seed(1)
    prompts = [_ids(model, 2, (5, 6)), _ids(model, 5, (7, 8, 9, 10)), _ids(model, 3, (11,))]
    audio = torch.randn(3, 5, h)
    engine = HFRolloutEngine(
        SamplingSettings(max_new_tokens=10, do_sample=False), [tokenizer.eos_token_id], tokenizer.pad_token_id, []
    )
    batched = engine.generate(model, prompts, AudioRows(audio_embeds=audio)).completion_ids
    single = [
        engine.generate(model, [p], AudioRows(audio_embeds=audio[i : i + 1])).completion_ids[0]
        for i, p in enumerate(prompts)
    ]
    assert batched == single
