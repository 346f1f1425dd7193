"""Qwen2-Audio behind the harness's model contract (``grpo_audio.model.qwen2_audio``, its front end
``grpo_audio.audio.qwen2_audio``): the same prompts, audio features and logits as transformers' own class fed by its
own processor, and saves that transformers loads back with identical tensors. The tiny model and tokenizer are built
in process."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor, WhisperFeatureExtractor

from grpo_audio.audio import qwen2_audio as front_end
from grpo_audio.model.qwen2_audio import AUDIO_SPECIAL_TOKENS, AUDIO_TOKEN, CHAT_TEMPLATE, build_tiny_qwen2_audio
from grpo_audio.model.tokenizer import build_tiny_tokenizer
from grpo_audio.recipe.schema import TinyModelSpec

QUESTION = "Which tone is higher? Answer in <answer></answer>."
SECONDS = (2.0, 7.3, 41.0)  # shorter and longer than the 30 s window


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tiny_tokenizer([QUESTION] * 4, 384, AUDIO_SPECIAL_TOKENS, CHAT_TEMPLATE)
    tokenizer.padding_side = "left"
    model = build_tiny_qwen2_audio(TinyModelSpec(), tokenizer, seed=0).eval()
    return tokenizer, model


def messages(text: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "audio_url": "clip.wav"}, {"type": "text", "text": text}]}]


def test_placeholder_counts_follow_the_processor():
    extractor = WhisperFeatureExtractor(feature_size=128)
    for seconds in (0.05, 1.0, 2.0, 7.3, 29.99, 30.0, 41.0):
        wave = tone(seconds, 440.0)
        mask = extractor(wave, sampling_rate=16000, padding="max_length", return_attention_mask=True)["attention_mask"]
        frames = int(np.asarray(mask).sum())
        assert front_end.mel_frames(len(wave)) == frames, seconds
        assert front_end.placeholder_count(frames) == (((frames - 1) // 2 + 1) - 2) // 2 + 1
        assert front_end.placeholders_for_file_length(len(wave) * 3, 48000) == front_end.placeholder_count(frames)
    assert front_end.placeholder_count(3000) == 750 and front_end.placeholder_count(100) == 25


def test_the_harness_model_gives_transformers_logits_on_the_processors_inputs(tiny, tmp_path):
    tokenizer, model = tiny
    model.save_pretrained(tmp_path / "saved")
    theirs = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    processor = Qwen2AudioProcessor(WhisperFeatureExtractor(feature_size=128), tokenizer, chat_template=CHAT_TEMPLATE)
    waves = [tone(s, hz) for s, hz in zip(SECONDS, (220.0, 440.0, 880.0), strict=True)]
    texts = [processor.apply_chat_template(messages(QUESTION), add_generation_prompt=True, tokenize=False)] * 3
    inputs = processor(text=texts, audio=waves, sampling_rate=16000, return_tensors="pt", padding=True)

    # the harness's own path: its front end, the prompt with the placeholders repeated, left padding
    features = [front_end.prepare_waveform(w) for w in waves]
    rendered = [t.replace(AUDIO_TOKEN, AUDIO_TOKEN * f.n_placeholders) for t, f in zip(texts, features, strict=True)]
    ours_in = tokenizer(rendered, return_tensors="pt", padding=True)
    assert torch.equal(ours_in["input_ids"], inputs["input_ids"])  # the same prompt layout, token for token
    window = torch.stack([f.input_features for f in features])  # (B, 1, 128, 3000)
    torch.testing.assert_close(window[:, 0], inputs["input_features"], atol=1e-5, rtol=0)
    lengths = torch.tensor([f.mel_frames for f in features])
    assert lengths.tolist() == inputs["feature_attention_mask"].sum(-1).tolist()

    with torch.no_grad():
        expected = theirs(**inputs).logits
        got = model(input_ids=ours_in["input_ids"], attention_mask=ours_in["attention_mask"],
                    input_features=window, feature_lengths=lengths).logits  # fmt: skip
        # the embeds form: each clip encoded alone (the feature cache), spliced at the placeholders
        per_clip = [model.clip_audio_embeds(f) for f in features]
        embeds = torch.zeros(3, max(c.size(0) for c in per_clip), per_clip[0].size(-1))
        for i, c in enumerate(per_clip):
            embeds[i, : c.size(0)] = c
        from_embeds = model(input_ids=ours_in["input_ids"], attention_mask=ours_in["attention_mask"],
                            audio_embeds=embeds).logits  # fmt: skip
    real = ours_in["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(from_embeds[real], expected[real], atol=1e-5, rtol=0)
    # the clips are heard: the same prompt with another clip gives other logits
    assert (got[0, -1] - got[1, -1]).abs().max() > 1e-3


def test_a_save_loads_back_into_transformers_class_with_identical_tensors(tiny, tmp_path):
    _, model = tiny
    model.save_pretrained(tmp_path / "saved")
    theirs = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "saved")
    ours = model.state_dict()
    assert theirs.state_dict().keys() == ours.keys()
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    on_disk = load_file(tmp_path / "saved" / "model.safetensors")
    assert len(on_disk) >= len(ours) - 1  # every tensor is written (a fixed position table may be left out)


def run_cli(run, *overrides):
    from grpo_audio.cli import main

    base = ["data.synthetic.num_questions=8", "rollout.max_completion_length=12", "trainer.max_steps=2"]
    base += ["trainer.learning_rate=5e-2", 'rewards.terms=[{name: "helpers.mixed_signal:half_informative"}]']
    argv = ["train", "--set", f"run.output_dir={run}"]
    for item in [*base, *overrides]:
        argv += ["--set", item]
    return main(argv)


@pytest.mark.slow
def test_a_tiny_qwen2_audio_run_trains_saves_for_transformers_and_resumes_from_its_save(tmp_path):
    """``model.family: qwen2_audio`` through the whole loop: its prompt layout, an update, a final model that
    transformers' class and processor load with the trained tensors, and that directory as a pretrained source (the
    family read from its config.json), trained further with LoRA and saved merged."""
    from grpo_audio.model.build import load_pretrained

    first = tmp_path / "first"
    assert run_cli(first, "model.family=qwen2_audio") == 0
    prompt = (first / "prompt.txt").read_text()
    assert "Audio 1: <|audio_bos|><|AUDIO|><|AUDIO|>" in prompt and "<|cAUDIO|>" not in prompt
    steps = [json.loads(line) for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("grad_norm", 0) > 0 for m in steps)
    final = first / "final_model"
    theirs = Qwen2AudioForConditionalGeneration.from_pretrained(final)
    Qwen2AudioProcessor.from_pretrained(final)  # the processor's files are there
    _, ours = load_pretrained(final)
    assert type(ours).__name__ == "Qwen2AudioPolicy"
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(tensor, ours.state_dict()[name]), name
    initial = Qwen2AudioForConditionalGeneration.from_pretrained(first / "initial_model").state_dict()
    assert any(not torch.equal(initial[n], t) for n, t in theirs.state_dict().items())  # the run trained it

    second = tmp_path / "second"
    assert run_cli(second, "model.source=pretrained", f"model.path={final}", "model.lora={r: 4, alpha: 8}") == 0
    merged = Qwen2AudioForConditionalGeneration.from_pretrained(second / "final_model").state_dict()
    assert merged.keys() == theirs.state_dict().keys()  # LoRA merged: the plain class's names, no adapter tensors
    moved = [n for n, t in merged.items() if not torch.equal(t, theirs.state_dict()[n])]
    assert moved and all(".language_model." in n for n in moved)  # only the backbone's LoRA targets changed


def test_a_checkpoint_of_another_family_than_named_is_refused(tmp_path):
    from grpo_audio.model.family import FamilyError, family_for
    from grpo_audio.recipe import load_recipe

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_audio"}))
    recipe = load_recipe(None, ["model.source=pretrained", f"model.path={tmp_path}", "model.family=covo_audio"])
    with pytest.raises(FamilyError, match=r"model.family is 'covo_audio' but .* holds a 'qwen2_audio' checkpoint"):
        family_for(recipe.model)
    assert family_for(load_recipe(None, ["model.source=pretrained", f"model.path={tmp_path}"]).model).name == (
        "qwen2_audio"
    )


def test_a_checkpoint_whose_feature_extractor_differs_from_the_front_end_is_refused(tmp_path):
    from grpo_audio.model.checkpoint_load import CheckpointError
    from grpo_audio.model.family import check_feature_extractor

    WhisperFeatureExtractor(feature_size=128).save_pretrained(tmp_path)
    check_feature_extractor(tmp_path)  # the front end's own: accepted
    WhisperFeatureExtractor(feature_size=128, chunk_length=300).save_pretrained(tmp_path)  # a 300 s window
    with pytest.raises(CheckpointError, match=r"preprocessor_config.json: n_samples is 4800000; .* computes 480000"):
        check_feature_extractor(tmp_path)
