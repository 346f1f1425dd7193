"""Qwen2.5-Omni's thinker behind the harness's model contract (``grpo_audio.model.qwen2_5_omni``): the same logits as
transformers' own thinker class fed as its processor feeds it, and saves that transformers loads back with identical
tensors. The tiny model and tokenizer are built in process. The full processor needs a video processor that does not
import beside the CPU torch here, so its audio inputs are made with the Whisper feature extractor it holds (128 mel
bins, padded to the 30 s window, the attention mask kept as feature_attention_mask) and the text expanded as it
expands it (one <|AUDIO|> per frame)."""

import json

import numpy as np
import pytest
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor

from grpo_audio.audio import qwen2_audio as front_end
from grpo_audio.model.qwen2_5_omni import (
    AUDIO_SPECIAL_TOKENS,
    AUDIO_TOKEN,
    CHAT_TEMPLATE,
    VISION_TOKENS,
    build_tiny_omni_thinker,
    rope_sections,
)
from grpo_audio.model.tokenizer import build_tiny_tokenizer
from grpo_audio.recipe.schema import TinyModelSpec

QUESTION = "Which tone is higher? Answer in <answer></answer>."
SECONDS = (2.0, 7.3, 41.0)  # shorter and longer than the 30 s window


def tone(seconds: float, hz: float) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * hz * t) * (1 + 0.5 * np.sin(2 * np.pi * 0.7 * t))).astype(np.float32)


@pytest.fixture(scope="module")
def tiny():
    tokenizer = build_tiny_tokenizer([QUESTION] * 4, 384, AUDIO_SPECIAL_TOKENS, CHAT_TEMPLATE, VISION_TOKENS)
    tokenizer.padding_side = "left"
    model = build_tiny_omni_thinker(TinyModelSpec(), tokenizer, seed=0).eval()
    return tokenizer, model


def processor_inputs(tokenizer, waves):
    """What Qwen2_5OmniProcessor gives the thinker for these clips and one text each."""
    extractor = WhisperFeatureExtractor(feature_size=128)
    audio = extractor(
        waves, sampling_rate=16000, padding="max_length", return_attention_mask=True, return_tensors="pt"
    )
    frames = audio["attention_mask"].sum(-1)
    counts = (((frames - 1) // 2 + 1) - 2) // 2 + 1
    messages = [
        {"role": "user", "content": [{"type": "audio", "audio_url": "clip"}, {"type": "text", "text": QUESTION}]}
    ]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    texts = [text.replace(AUDIO_TOKEN, AUDIO_TOKEN * int(n)) for n in counts]
    inputs = tokenizer(texts, return_tensors="pt", padding=True)
    return {**inputs, "input_features": audio["input_features"], "feature_attention_mask": audio["attention_mask"]}


def test_rope_sections_split_half_the_head_as_released():
    assert rope_sections(128) == [16, 24, 24] and rope_sections(16) == [2, 3, 3]


def test_the_harness_model_gives_the_thinkers_logits(tiny, tmp_path):
    tokenizer, model = tiny
    model.save_pretrained(tmp_path / "saved")
    theirs = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tmp_path / "saved").eval()
    waves = [tone(s, hz) for s, hz in zip(SECONDS, (220.0, 440.0, 880.0), strict=True)]
    inputs = processor_inputs(tokenizer, waves)
    features = [front_end.prepare_waveform(w) for w in waves]
    assert [f.n_placeholders for f in features] == (inputs["input_ids"] == model.config.audio_token_index).sum(
        -1
    ).tolist()
    window = torch.stack([f.input_features for f in features])
    torch.testing.assert_close(window[:, 0], inputs["input_features"], atol=1e-5, rtol=0)
    lengths = torch.tensor([f.mel_frames for f in features])
    with torch.no_grad():
        expected = theirs(**inputs).logits  # its multimodal RoPE positions, from the attention mask
        got = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                    input_features=window, feature_lengths=lengths).logits  # fmt: skip
        per_clip = [model.clip_audio_embeds(f) for f in features]  # the embeds form: each clip encoded alone
        embeds = torch.zeros(3, max(c.size(0) for c in per_clip), per_clip[0].size(-1))
        for i, c in enumerate(per_clip):
            embeds[i, : c.size(0)] = c
        from_embeds = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                            audio_embeds=embeds).logits  # fmt: skip
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(from_embeds[real], expected[real], atol=1e-5, rtol=0)
    assert (got[0, -1] - got[1, -1]).abs().max() > 1e-3  # the clips are heard


def test_packed_rows_give_the_padded_rows_logprobs(tiny):
    """Padding-free: the rows end to end in one token row, positions restarting per row, handed to the backbone in
    its packed form: the same log-probs as the padded batch."""
    from grpo_audio.model.sampling import SamplingDistribution
    from grpo_audio.train.token_budget import pack_tokens, unpack_tokens

    tokenizer, model = tiny
    waves = [tone(2.0, 220.0), tone(3.5, 880.0)]
    inputs = processor_inputs(tokenizer, waves)
    features = [front_end.prepare_waveform(w) for w in waves]
    audio = {"input_features": torch.stack([f.input_features for f in features]),
             "feature_lengths": torch.tensor([f.mel_frames for f in features])}  # fmt: skip
    ids, mask = inputs["input_ids"], inputs["attention_mask"]
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-5] = -100  # the last 5 tokens of each row are scored
    sampling = SamplingDistribution(temperature=0.7)
    with torch.no_grad():
        padded = model(input_ids=ids, attention_mask=mask, logprob_labels=labels, sampling=sampling, **audio)
        flat_ids, flat_labels, positions, lengths = pack_tokens(ids, mask, labels)
        packed = model(input_ids=flat_ids, position_ids=positions, packed_lengths=lengths, logprob_labels=flat_labels,
                       sampling=sampling, **audio)  # fmt: skip
    torch.testing.assert_close(unpack_tokens(packed.log_probs, mask), padded.log_probs, atol=1e-5, rtol=0)


def test_a_save_loads_back_into_transformers_thinker_with_identical_tensors(tiny, tmp_path):
    _, model = tiny
    model.save_pretrained(tmp_path / "saved")
    theirs = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(tmp_path / "saved")
    ours = model.state_dict()
    assert theirs.state_dict().keys() == ours.keys()
    for name, tensor in theirs.state_dict().items():
        assert torch.equal(tensor, ours[name]), name
    assert json.loads((tmp_path / "saved" / "config.json").read_text())["model_type"] == "qwen2_5_omni_thinker"


@pytest.mark.slow
def test_a_tiny_thinker_run_trains_saves_for_transformers_and_resumes_from_its_save(tmp_path):
    """``model.family: qwen2_5_omni_thinker`` through the whole loop: its prompt layout, an update, a final model
    that transformers' thinker class loads with the trained tensors, and that directory as a pretrained source (the
    family read from its config.json), trained further with LoRA and saved merged."""
    from grpo_audio.cli import main
    from grpo_audio.model.build import load_pretrained

    def run(directory, *overrides):
        base = ["data.synthetic.num_questions=8", "rollout.max_completion_length=12", "trainer.max_steps=2"]
        base += ["trainer.learning_rate=5e-2", 'rewards.terms=[{name: "helpers.mixed_signal:half_informative"}]']
        argv = ["train", "--set", f"run.output_dir={directory}"]
        for item in [*base, *overrides]:
            argv += ["--set", item]
        return main(argv)

    first = tmp_path / "first"
    assert run(first, "model.family=qwen2_5_omni_thinker") == 0
    assert "<|audio_bos|><|AUDIO|><|AUDIO|>" in (first / "prompt.txt").read_text()
    final = first / "final_model"
    theirs = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(final).state_dict()
    _, ours = load_pretrained(final)
    assert type(ours).__name__ == "OmniThinkerPolicy"
    assert all(torch.equal(t, ours.state_dict()[n]) for n, t in theirs.items())
    initial = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(first / "initial_model").state_dict()
    moved = [n for n, t in theirs.items() if not torch.equal(initial[n], t)]
    assert moved and not any(n.startswith("visual.") for n in moved)  # trained, the vision tower left alone

    second = tmp_path / "second"
    assert run(second, "model.source=pretrained", f"model.path={final}", "model.lora={r: 4, alpha: 8}") == 0
    merged = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(second / "final_model").state_dict()
    assert merged.keys() == theirs.keys()
    changed = [n for n, t in merged.items() if not torch.equal(t, theirs[n])]
    assert changed and all(n.startswith("model.layers.") for n in changed)  # LoRA on the text model's layers only


def full_omni_directory(path, tokenizer) -> None:
    """A released-style Qwen2.5-Omni directory at tiny widths: the thinker under ``thinker.``, a talker tensor in a
    shard of its own (the talker itself is not built: ``enable_audio_output`` false), the index, the tokenizer and a
    ``spk_dict.pt`` standing in for the talker's speakers (an empty one: the harness never opens it, transformers'
    full class reads it back)."""
    from safetensors.torch import save_file
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from grpo_audio.model.qwen2_5_omni import tiny_omni_thinker_config

    thinker = tiny_omni_thinker_config(TinyModelSpec(), tokenizer)
    config = Qwen2_5OmniConfig(thinker_config=thinker.to_dict(), enable_audio_output=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        full = Qwen2_5OmniForConditionalGeneration(config)
    full.save_pretrained(path)
    tokenizer.save_pretrained(path)
    state = {k: v.contiguous() for k, v in full.state_dict().items()}
    (path / "model.safetensors").unlink()
    save_file(state, str(path / "model-00001-of-00002.safetensors"), metadata={"format": "pt"})
    save_file(
        {"talker.codec_head.weight": torch.arange(12.0).reshape(3, 4)}, str(path / "model-00002-of-00002.safetensors")
    )
    weight_map = {k: "model-00001-of-00002.safetensors" for k in state}
    weight_map["talker.codec_head.weight"] = "model-00002-of-00002.safetensors"
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    torch.save({}, path / "spk_dict.pt")


@pytest.mark.slow
def test_the_thinker_trains_out_of_a_full_omni_directory_and_is_written_back_into_one(tiny, tmp_path, monkeypatch):
    """model.path at a full Qwen2.5-Omni directory: the thinker family is read from its config.json, the thinker's
    weights load from under ``thinker.`` (its ``spk_dict.pt`` left unopened), and the final model is the full
    directory again: config as it was, the trained thinker in place, the talker's tensors and files copied."""
    from safetensors import safe_open
    from transformers import Qwen2_5OmniForConditionalGeneration

    from grpo_audio.cli import main

    tokenizer, _ = tiny
    source = tmp_path / "omni"
    full_omni_directory(source, tokenizer)
    run = tmp_path / "run"
    overrides = ["model.source=pretrained", f"model.path={source}", "data.synthetic.num_questions=8",
                 "rollout.max_completion_length=8", "trainer.max_steps=2", "trainer.learning_rate=5e-2",
                 'rewards.terms=[{name: "helpers.mixed_signal:half_informative"}]']  # fmt: skip
    real_load = torch.load

    def guarded_load(f, *args, **kwargs):
        assert "spk_dict" not in str(f), "the harness opened spk_dict.pt"
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", guarded_load)
    assert main(["train", *[x for o in [f"run.output_dir={run}", *overrides] for x in ("--set", o)]]) == 0
    monkeypatch.setattr(torch, "load", real_load)
    final = run / "final_model"
    assert json.loads((final / "config.json").read_text()) == json.loads((source / "config.json").read_text())
    assert (final / "spk_dict.pt").read_bytes() == (source / "spk_dict.pt").read_bytes()
    names = {}
    for file in final.glob("*.safetensors"):
        with safe_open(str(file), "pt") as handle:
            names.update({k: handle.get_tensor(k) for k in handle.keys()})  # safe_open: not iterable
    assert torch.equal(names["talker.codec_head.weight"], torch.arange(12.0).reshape(3, 4))
    reloaded = Qwen2_5OmniForConditionalGeneration.from_pretrained(final).thinker.state_dict()
    before = Qwen2_5OmniForConditionalGeneration.from_pretrained(source).thinker.state_dict()
    assert reloaded.keys() == before.keys()
    assert all(torch.equal(reloaded[k], names[f"thinker.{k}"]) for k in reloaded)  # transformers reads them back
    assert any(not torch.equal(reloaded[k], before[k]) for k in reloaded)  # the thinker trained
