"""Audio for a batch of rows, in the form the policy models' forward takes, and how it is computed.

Two forms (see ``grpo_audio.model.modeling`` and ``grpo_audio.model.qwen2_audio``):
* ``embeds``: adapter outputs (B, N_max, H), computed once per clip (one encoder call each, cached across steps),
  and reused by the rollout and by every log-prob pass (old, reference, policy). Valid only while the
  encoder and the adapter are frozen (no gradient has to flow into them).
* ``mel``: log-mel segments (B, S_max, 128, 3000) + segments per row (+ valid mel frames per row, for a front end
  whose model needs them: ``feature_lengths``); the encoder/adapter run inside each forward, so gradients reach
  whichever of them is trained.

The clip's features come from the model family's front end (``grpo_audio.audio.front_ends``); the embeds form asks
the model for a clip's frames (``clip_audio_embeds``) with its audio modules (``audio_modules``) in eval mode.

Rows of a GRPO batch repeat each clip G times; features are computed per unique clip and then indexed per row.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from grpo_audio.audio.front_ends import COVO_FRONT_END, AudioFrontEnd
from grpo_audio.audio.resample import DEFAULT_RESAMPLER

AUDIO_KEYS = ("audio_embeds", "input_features", "audio_segment_counts", "feature_lengths")


@dataclass
class AudioRows:
    """Per-row audio tensors, first dimension = row (so TRL shuffles and splits them with the other tensors)."""

    audio_embeds: torch.Tensor | None = None
    input_features: torch.Tensor | None = None
    audio_segment_counts: torch.Tensor | None = None
    feature_lengths: torch.Tensor | None = None

    def __len__(self) -> int:
        tensor = self.audio_embeds if self.audio_embeds is not None else self.input_features
        return 0 if tensor is None else tensor.size(0)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in AUDIO_KEYS if getattr(self, k) is not None}

    def select(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The rows ``index`` (any order), as model inputs."""
        return {k: v[index.to(v.device)] for k, v in self.as_dict().items()}

    @classmethod
    def from_inputs(cls, inputs: dict) -> AudioRows:
        return cls(**{k: inputs.get(k) for k in AUDIO_KEYS})


@contextmanager
def eval_mode(*modules: torch.nn.Module):
    """The modules in eval mode inside the block, back in their own mode after it."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, training in zip(modules, modes, strict=True):
            m.train(training)


def policy_model(model):
    """The policy model (``CovoAudioForConditionalGeneration``, ``Qwen2AudioPolicy``) inside a possibly PEFT- or
    accelerate-wrapped one."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "module", base)


def covo_core(model):
    """The ``CovoAudioModel`` inside a (possibly PEFT- or accelerate-wrapped) ``CovoAudioForConditionalGeneration``."""
    return policy_model(model).model


class AudioFeaturizer:
    """Loads clips and turns a list of row paths into ``AudioRows``.

    Two LRU caches keyed by path: log-mels (``mel_cache_size`` clips), and, in the ``embeds`` form, the adapter
    features of each clip (``embed_cache_mb`` megabytes; 0 disables it). The second is valid because the form is
    only used while the encoder and adapter are frozen: a clip's features never change during the run, so a
    clip seen in an earlier step costs no encoder call at all. ``encoder_calls`` counts the encoder invocations
    made here (one per clip encoded: ``clip_embeddings``); tests and benchmarks read it. ``resampler`` ("sinc",
    the release's, or "soxr"; recipe ``data.resampler``) brings each clip to 24 kHz and each segment to 16 kHz.
    """

    def __init__(
        self,
        reuse_embeddings: bool,
        mel_cache_size: int = 256,
        embed_cache_mb: float = 512.0,
        ablation: str = "none",
        resampler: str = DEFAULT_RESAMPLER,
        front_end: AudioFrontEnd = COVO_FRONT_END,
    ) -> None:
        if ablation not in ("none", "silence"):
            raise ValueError(f"unknown audio ablation {ablation!r}")
        self.reuse_embeddings = reuse_embeddings
        self.ablation = ablation
        self.resampler = resampler
        self.front_end = front_end
        self.mel_cache_size = mel_cache_size
        self.embed_cache_bytes = int(embed_cache_mb * 2**20)
        self._mels: OrderedDict[str, object] = OrderedDict()
        self._embeds: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._embed_bytes = 0
        self.encoder_calls = 0
        self.clips_encoded = 0

    def features(self, path: str):
        """The front end's features of the clip at ``path`` (``CovoAudioFeatures``, ``WindowFeatures``)."""
        if path in self._mels:
            self._mels.move_to_end(path)
            return self._mels[path]
        front_end = self.front_end
        feats = front_end.prepare_file(path, resampler=self.resampler)
        if self.ablation == "silence":
            # Same length (so the same placeholders), no content: the control for "the gain comes from listening"
            silent = np.zeros(feats.n_samples, dtype=np.float32)
            feats = front_end.prepare_waveform(silent, resampler=self.resampler)
        self._mels[path] = feats
        if len(self._mels) > self.mel_cache_size:
            self._mels.popitem(last=False)
        return feats

    def rows(self, paths: Sequence[str], model, device: torch.device) -> AudioRows:
        unique = list(dict.fromkeys(paths))
        index = {p: i for i, p in enumerate(unique)}
        rows = torch.tensor([index[p] for p in paths])
        if not self.reuse_embeddings:
            feats = {p: self.features(p) for p in unique}
            s_max = max(f.input_features.size(0) for f in feats.values())
            mel = torch.zeros(len(unique), s_max, *next(iter(feats.values())).input_features.shape[1:])
            for i, p in enumerate(unique):
                mel[i, : feats[p].input_features.size(0)] = feats[p].input_features
            counts = torch.tensor([feats[p].input_features.size(0) for p in unique])
            lengths = None
            if all(hasattr(f, "mel_frames") for f in feats.values()):  # the model needs its windows' valid length
                lengths = torch.tensor([feats[p].mel_frames for p in unique])[rows].to(device)
            return AudioRows(
                input_features=mel[rows].to(device),
                audio_segment_counts=counts[rows].to(device),
                feature_lengths=lengths,
            )
        per_clip = self.clip_embeddings(unique, model, device)
        n_max = max(c.size(0) for c in per_clip)
        padded = per_clip[0].new_zeros(len(unique), n_max, per_clip[0].size(-1))
        for i, c in enumerate(per_clip):
            padded[i, : c.size(0)] = c
        return AudioRows(audio_embeds=padded[rows.to(padded.device)])

    def clip_embeddings(self, paths: list[str], model, device: torch.device) -> list[torch.Tensor]:
        """(n_placeholders, H) adapter features per clip; one encoder call per clip not cached yet.

        Each clip is encoded on its own, never batched with other clips: a batched matmul rounds differently with
        the batch's size and content (measured: up to 2e-6 apart on the tiny model), so a clip's features would
        depend on which clips it first shared a batch with. Encoded alone, they are a function of the clip: a
        resumed run (empty cache) and dynamic sampling's refill rounds get bit-identical features. The encoder's
        share of a step is small, and with the cache each clip is encoded once per run.

        Frozen features are computed in eval mode: no dropout, and no draw from the global random stream (in train
        mode Whisper's encoder draws one number per layer per call for its layer drop, even at layerdrop 0), so
        which clips happen to be cached never moves the stream that TRL's batch shuffle and the update use.
        """
        missing = list(dict.fromkeys(p for p in paths if p not in self._embeds))
        computed: dict[str, torch.Tensor] = {}
        policy = policy_model(model)
        for p in missing:
            feats = self.features(p)
            with torch.no_grad(), eval_mode(*policy.audio_modules()):
                computed[p] = policy.clip_audio_embeds(feats)  # (n_placeholders, H)
            self.encoder_calls += 1
            self.clips_encoded += 1
        out = []
        for p in paths:
            if p in computed:
                embeds = computed[p]
                self._remember(p, embeds)
            else:
                embeds = self._embeds[p]
                self._embeds.move_to_end(p)
            out.append(embeds.to(device))
        return out

    def _remember(self, path: str, embeds: torch.Tensor) -> None:
        size = embeds.numel() * embeds.element_size()
        if size > self.embed_cache_bytes:
            return
        self._embeds[path] = embeds.clone()  # a copy: a view would keep the whole batch tensor alive
        self._embed_bytes += size
        while self._embed_bytes > self.embed_cache_bytes:
            _, dropped = self._embeds.popitem(last=False)
            self._embed_bytes -= dropped.numel() * dropped.element_size()
