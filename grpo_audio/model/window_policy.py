"""The harness's model contract for transformers' Qwen audio classes (Qwen2-Audio, Qwen2.5-Omni's thinker), shared.

A policy class is ``WindowAudioPolicy`` mixed into transformers' own class, so the modules and parameter names are
transformers' (a released checkpoint loads, and a save loads back into transformers' class). The mixin adds what
``CovoAudioForConditionalGeneration`` offers:

* audio per batch row in one of two forms: ``input_features`` (B, 1, 128, F), one log-mel window per row (the
  segment dimension of the Covo form, always 1 here), with ``feature_lengths`` (B,) its valid mel frames L_b; or
  ``audio_embeds`` (B, N_max, H), frames computed once per clip (frozen audio tower);
* row b's first n_b frames fill its n_b audio placeholders, n_b counted from ``input_ids`` (both towers give
  ((L_b - 1) // 2 + 1 - 2) // 2 + 1 frames, the count their processors write into the prompt);
* ``logprob_labels`` (with ``sampling``) returns the sampled tokens' log-probs instead of logits
  (``grpo_audio.model.audio_heads``); ``packed_lengths`` takes several rows laid end to end in one token row.

A class supplies ``encode_audio`` (windows -> frames), ``audio_modules``, ``backbone`` (the text model the spliced
embeddings go through), ``placeholder_name`` and ``backbone_positions`` (position ids as its backbone takes them).
"""

from __future__ import annotations

import torch

from grpo_audio.model.audio_heads import causal_lm_output, splice_audio_rows
from grpo_audio.model.sampling import SamplingDistribution


class WindowAudioPolicy:
    """The mixin (module docstring); first in the bases, before transformers' class."""

    placeholder_name = "<|AUDIO|>"

    @property
    def backbone(self) -> torch.nn.Module:
        raise NotImplementedError

    def encode_audio(self, input_features: torch.Tensor, feature_lengths: torch.Tensor) -> torch.Tensor:
        """(N, 128, F) windows with L_n valid frames each -> (N, n_max, H) frames, row n's first n_n its audio."""
        raise NotImplementedError

    def audio_modules(self) -> list[torch.nn.Module]:
        raise NotImplementedError

    def backbone_positions(self, position_ids: torch.Tensor | None, packed: bool) -> torch.Tensor | None:
        """Position ids as the backbone takes them (the 2-D ids unchanged here)."""
        return position_ids

    @property
    def audio_placeholder_id(self) -> int:
        return self.config.audio_token_index

    def embed_audio_rows(self, input_features: torch.Tensor, feature_lengths: torch.Tensor | None) -> torch.Tensor:
        """Per-row frames from the rows' windows (B, 1, 128, F) or (B, 128, F)."""
        if input_features.dim() == 4:
            if input_features.size(1) != 1:
                raise ValueError(f"this model takes one log-mel window per row, got {input_features.size(1)}")
            input_features = input_features[:, 0]
        if feature_lengths is None:
            raise ValueError("input_features needs feature_lengths (valid mel frames per row)")
        return self.encode_audio(input_features, feature_lengths)

    def clip_audio_embeds(self, features) -> torch.Tensor:
        """(n_placeholders, H) frames of one clip (``grpo_audio.audio.qwen2_audio.WindowFeatures``), encoded alone."""
        device = self.audio_modules()[0].conv1.weight.device
        lengths = torch.tensor([features.mel_frames], device=device)
        return self.encode_audio(features.input_features.to(device), lengths)[0, : features.n_placeholders]

    def splice(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        input_features: torch.Tensor | None,
        feature_lengths: torch.Tensor | None,
        audio_embeds: torch.Tensor | None,
        packed_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``inputs_embeds`` with each row's audio frames at its placeholders."""
        if input_features is not None and audio_embeds is not None:
            raise ValueError("give either input_features or audio_embeds, not both")
        if input_features is not None:
            audio_embeds = self.embed_audio_rows(input_features, feature_lengths)
        placeholder = self.audio_placeholder_id
        if audio_embeds is not None:
            return splice_audio_rows(
                input_ids, inputs_embeds, audio_embeds, placeholder, self.placeholder_name, packed_lengths
            )
        if (input_ids == placeholder).any():
            raise ValueError(f"input_ids contain {self.placeholder_name} placeholders but no audio was given")
        return inputs_embeds

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        feature_lengths: torch.LongTensor | None = None,
        audio_segment_counts: torch.LongTensor | None = None,
        audio_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        logprob_labels: torch.LongTensor | None = None,
        sampling: SamplingDistribution | None = None,
        logprob_entropy: bool = False,
        logprob_outside_mass: bool = False,
        packed_lengths: torch.LongTensor | None = None,
        **kwargs,
    ):
        """Logits (or, with ``logprob_labels``, the sampled tokens' log-probs: ``SampledTokenOutput``) with each row's
        audio spliced in. ``audio_segment_counts`` (the Covo form's segments per row) must be all ones when given."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids and inputs_embeds")
        if packed_lengths is not None and (attention_mask is not None or position_ids is None):
            raise ValueError("packed_lengths needs position_ids restarting at each row and no attention_mask")
        if audio_segment_counts is not None and bool((audio_segment_counts > 1).any()):
            raise ValueError("this model takes one log-mel window per row; a row has more segments")
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds = self.splice(
                input_ids, inputs_embeds, input_features, feature_lengths, audio_embeds, packed_lengths
            )
        if logprob_labels is not None:
            use_cache = False
        outputs = self.backbone(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=self.backbone_positions(position_ids, packed_lengths is not None),
            past_key_values=past_key_values,
            use_cache=use_cache,
            **kwargs,
        )
        return causal_lm_output(
            self, outputs, self.config.get_text_config().vocab_size, logits_to_keep, labels, logprob_labels, sampling,
            logprob_entropy, logprob_outside_mass,
        )  # fmt: skip

    @torch.no_grad()
    def prompt_embeddings(
        self,
        input_ids: torch.Tensor,
        *,
        input_features: torch.Tensor | None = None,
        feature_lengths: torch.Tensor | None = None,
        audio_segment_counts: torch.Tensor | None = None,
        audio_embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with the audio spliced in: what both rollout engines consume."""
        embeds = self.get_input_embeddings()(input_ids)
        return self.splice(input_ids, embeds, input_features, feature_lengths, audio_embeds)


__all__ = ["WindowAudioPolicy"]
