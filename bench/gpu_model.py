"""What ``bench/gpu_check.py`` measures on: a random Covo-Audio of the released shapes built straight on the device,
a tokenizer carrying the released special-token ids, 30 s clips and their rows, and the memory helpers.

Nothing here downloads. The model's weights are random (the model's own ``_init_weights``: N(0, 0.02)); the
tokenizer is the harness's tiny byte-level BPE padded with unused entries so that its special tokens sit at the
released ids (``RELEASED_IDS``) and ``len(tokenizer)`` is the released 151,671, the first speech-token id.
"""

from __future__ import annotations

import contextlib
import gc
import json
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tokenizers import Tokenizer, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from grpo_audio.data.rows import AudioQuestion
from grpo_audio.model.configuration import CovoAudioConfig
from grpo_audio.model.modeling import CovoAudioForConditionalGeneration
from grpo_audio.model.tokenizer import (
    AUDIO_BEGIN,
    AUDIO_END,
    AUDIO_PLACEHOLDER,
    CHATML_TEMPLATE,
    ENDOFTEXT,
    IM_END,
    IM_START,
    build_tiny_tokenizer,
)

GIB = 2**30
# Qwen2.5's text vocabulary ends below <|endoftext|>; Covo-Audio's audio markers follow Qwen2.5's 22 special tokens.
# The reference gives <|cAUDIO|> = 151666 and len(tokenizer) = 151671; the two markers around it are assumed to be its
# neighbours. The special ids between and after them (the release's other special tokens) get placeholders.
RELEASED_IDS = {
    ENDOFTEXT: 151643,
    IM_START: 151644,
    IM_END: 151645,
    AUDIO_BEGIN: 151665,
    AUDIO_PLACEHOLDER: 151666,
    AUDIO_END: 151667,
}
RELEASED_TEXT_VOCAB = 151643
RELEASED_TOKENIZER_SIZE = 151671
CLIP_SAMPLE_RATE = 16000


def released_id_tokenizer(corpus: list[str], text_vocab_size: int = 384) -> PreTrainedTokenizerFast:
    """The tiny BPE trained on ``corpus``, padded with unused entries up to id 151642, then the special tokens at the
    released ids (``RELEASED_IDS``; unnamed ones as ``<|reserved_special_N|>``): ``len(tokenizer)`` = 151,671.

    The padding entries are 3-character byte-level strings no merge produces: text never encodes to them, but a
    random model may sample them, and they decode (to arbitrary bytes) like any other id.
    """
    tiny = build_tiny_tokenizer(corpus, text_vocab_size)
    state = json.loads(tiny.backend_tokenizer.to_str())
    vocab = state["model"]["vocab"]
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    code = 0
    while len(vocab) < RELEASED_TEXT_VOCAB:
        filler = "".join(alphabet[(code // 256**k) % 256] for k in range(3))
        code += 1
        if filler not in vocab:
            vocab[filler] = len(vocab)
    state["added_tokens"] = []
    backend = Tokenizer.from_str(json.dumps(state))
    by_id = {i: t for t, i in RELEASED_IDS.items()}
    specials = [by_id.get(i, f"<|reserved_special_{i}|>") for i in range(RELEASED_TEXT_VOCAB, RELEASED_TOKENIZER_SIZE)]
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    check_released_ids(tokenizer)
    return tokenizer


def check_released_ids(tokenizer) -> None:
    """Raise unless every token of ``RELEASED_IDS`` has its released id and ``len(tokenizer)`` is 151,671."""
    got = {t: tokenizer.convert_tokens_to_ids(t) for t in RELEASED_IDS}
    if got != RELEASED_IDS or len(tokenizer) != RELEASED_TOKENIZER_SIZE:
        raise AssertionError(f"tokenizer ids {got}, size {len(tokenizer)}; expected {RELEASED_IDS}, 151671")


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    saved = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(saved)


def build_random_model(config: CovoAudioConfig, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """``CovoAudioForConditionalGeneration(config)`` created on ``device`` in ``dtype``: every parameter is allocated
    and initialised there (no host copy of the 16 GiB of the 7B). The rotary ``inv_freq`` buffers stay float32."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        with torch.device(device), default_dtype(dtype):
            model = CovoAudioForConditionalGeneration(config)
    return model.eval()


def write_clips(directory: Path, count: int, seconds: float, seed: int = 0) -> list[Path]:
    """``count`` mono 16 kHz WAV files of ``seconds`` each: a tone of random pitch in low noise (content is
    irrelevant to the timings; the decoder, resampler and log-mel run on them as on any clip)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * CLIP_SAMPLE_RATE)) / CLIP_SAMPLE_RATE
    paths = []
    for i in range(count):
        wave = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + rng.normal(0, 0.01, t.shape)
        path = directory / f"clip{i}.wav"
        sf.write(path, wave.astype(np.float32), CLIP_SAMPLE_RATE, subtype="PCM_16")
        paths.append(path)
    return paths


def clip_rows(paths: list[Path]) -> list[AudioQuestion]:
    """One two-choice question per clip, as a dataset row."""
    return [
        AudioQuestion(
            f"clip{i}", str(p.resolve()), "Is the tone in this clip high or low in pitch?", ["high", "low"], "high"
        )
        for i, p in enumerate(paths)
    ]


def is_cuda(device: torch.device) -> bool:
    return device.type == "cuda"


def synchronize(device: torch.device) -> None:
    if is_cuda(device):
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only)."""
    if is_cuda(device):
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    """GiB allocated at most since the last ``reset_peak`` (``torch.cuda.max_memory_allocated``); None on CPU."""
    return torch.cuda.max_memory_allocated(device) / GIB if is_cuda(device) else None


def allocated_gib(device: torch.device) -> float | None:
    return torch.cuda.memory_allocated(device) / GIB if is_cuda(device) else None


def release_memory(device: torch.device) -> None:
    """Collect garbage and hand cached blocks back, so that the next phase starts from what is still referenced."""
    gc.collect()
    if is_cuda(device):
        torch.cuda.empty_cache()
