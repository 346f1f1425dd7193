"""Audio for a batch of rows, in the form ``CovoAudioModel.forward`` takes, and how it is computed.

Two forms (see ``grpo_audio.model.modeling``):
* ``embeds``: adapter outputs (B, N_max, H), computed once per generation batch, one encoder call for all unique
  clips, and reused by the rollout and by every log-prob pass (old, reference, policy). Valid only while the
  encoder and the adapter are frozen (no gradient has to flow into them).
* ``mel``: log-mel segments (B, S_max, 128, 3000) + segments per row; the encoder/adapter run inside each forward,
  so gradients reach whichever of them is trained.

Rows of a GRPO batch repeat each clip G times; features are computed per unique clip and then indexed per row.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from grpo_audio.audio.covo import CovoAudioFeatures, prepare_file

AUDIO_KEYS = ("audio_embeds", "input_features", "audio_segment_counts")


@dataclass
class AudioRows:
    """Per-row audio tensors, first dimension = row (so TRL shuffles and splits them with the other tensors)."""

    audio_embeds: torch.Tensor | None = None
    input_features: torch.Tensor | None = None
    audio_segment_counts: torch.Tensor | None = None

    def __len__(self) -> int:
        tensor = self.audio_embeds if self.audio_embeds is not None else self.input_features
        return 0 if tensor is None else tensor.size(0)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in AUDIO_KEYS if getattr(self, k) is not None}

    def rows(self, start: int, end: int) -> dict[str, torch.Tensor]:
        return {k: v[start:end] for k, v in self.as_dict().items()}

    @classmethod
    def from_inputs(cls, inputs: dict) -> AudioRows:
        return cls(**{k: inputs.get(k) for k in AUDIO_KEYS})


def covo_core(model):
    """The ``CovoAudioModel`` inside a (possibly PEFT- or accelerate-wrapped) ``CovoAudioForConditionalGeneration``."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    base = getattr(base, "module", base)
    return base.model


class AudioFeaturizer:
    """Loads clips (log-mels cached per path, LRU) and turns a list of row paths into ``AudioRows``.

    ``encoder_calls`` counts encoder invocations made here (the ``embeds`` form); tests and benchmarks read it.
    """

    def __init__(self, reuse_embeddings: bool, mel_cache_size: int = 256) -> None:
        self.reuse_embeddings = reuse_embeddings
        self.mel_cache_size = mel_cache_size
        self._mels: OrderedDict[str, CovoAudioFeatures] = OrderedDict()
        self.encoder_calls = 0

    def features(self, path: str) -> CovoAudioFeatures:
        if path in self._mels:
            self._mels.move_to_end(path)
            return self._mels[path]
        feats = prepare_file(path)
        self._mels[path] = feats
        if len(self._mels) > self.mel_cache_size:
            self._mels.popitem(last=False)
        return feats

    def rows(self, paths: Sequence[str], model, device: torch.device) -> AudioRows:
        unique = list(dict.fromkeys(paths))
        feats = {p: self.features(p) for p in unique}
        index = {p: i for i, p in enumerate(unique)}
        if not self.reuse_embeddings:
            s_max = max(f.input_features.size(0) for f in feats.values())
            mel = torch.zeros(len(unique), s_max, *next(iter(feats.values())).input_features.shape[1:])
            for i, p in enumerate(unique):
                mel[i, : feats[p].input_features.size(0)] = feats[p].input_features
            counts = torch.tensor([feats[p].input_features.size(0) for p in unique])
            rows = torch.tensor([index[p] for p in paths])
            return AudioRows(input_features=mel[rows].to(device), audio_segment_counts=counts[rows].to(device))
        core = covo_core(model)
        segments = torch.cat([feats[p].input_features for p in unique]).to(device)
        with torch.no_grad():
            encoded = core.encode_segments(segments)  # (sum S, 188, H), one encoder call
        self.encoder_calls += 1
        per_clip, offset = [], 0
        for p in unique:
            s = feats[p].input_features.size(0)
            per_clip.append(encoded[offset : offset + s].reshape(-1, encoded.size(-1))[: feats[p].n_placeholders])
            offset += s
        n_max = max(c.size(0) for c in per_clip)
        padded = encoded.new_zeros(len(unique), n_max, encoded.size(-1))
        for i, c in enumerate(per_clip):
            padded[i, : c.size(0)] = c
        rows = torch.tensor([index[p] for p in paths], device=padded.device)
        return AudioRows(audio_embeds=padded[rows])
