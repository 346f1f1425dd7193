"""What every family's model does the same way around its backbone: audio frames spliced in at the placeholders,
and the sampled tokens' log-probs read off the last hidden states.

``splice_audio_rows``: row b's first n_b audio frames replace its n_b placeholder embeddings, in order (n_b counted
from ``input_ids``); with ``packed_lengths`` the one token row holds several rows end to end (padding-free passes,
``grpo_audio.train.token_budget``), and the audio keeps one row per packed row.

``sampled_token_logprobs``: for each next-token label (position t predicts token t + 1, -100 where not scored) the
log-probability under the processed sampling distribution (``grpo_audio.model.sampling``: text-only mask,
temperature, top-k, top-p), optionally its entropy and the mass the unmasked distribution puts on banned ids, without
materialising (B, T, V) logits. The head runs in its own dtype, outside autocast.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput

from grpo_audio.model.sampling import SamplingDistribution, token_logprobs


@dataclass
class SampledTokenOutput(ModelOutput):
    """Per next-token label (B, T - 1), zero where the label is -100: ``log_probs`` under the processed sampling
    distribution, ``entropy`` of it, ``outside_mass`` (no gradient) the probability the unmasked distribution puts
    on the banned ids (each of the two None unless asked for); ``label_mask`` marks the scored positions."""

    log_probs: torch.Tensor | None = None
    entropy: torch.Tensor | None = None
    outside_mass: torch.Tensor | None = None
    label_mask: torch.Tensor | None = None


def placeholder_counts(placeholder: torch.Tensor, packed_lengths: torch.Tensor | None) -> torch.Tensor:
    """Placeholders per row: (B,) from a (B, T) mask, or per packed row of a (1, T) mask."""
    if packed_lengths is None:
        return placeholder.sum(dim=1)
    if placeholder.size(0) != 1 or int(packed_lengths.sum()) != placeholder.size(1):
        raise ValueError(
            f"packed_lengths sum to {int(packed_lengths.sum())} tokens for token rows of shape "
            f"{tuple(placeholder.shape)}: packing lays the rows in one token row"
        )
    lengths = packed_lengths.to(placeholder.device)
    row_of_token = torch.repeat_interleave(torch.arange(len(lengths), device=placeholder.device), lengths)
    counts = torch.zeros(len(lengths), dtype=torch.long, device=placeholder.device)
    return counts.index_add(0, row_of_token, placeholder[0].long())


def splice_audio_rows(
    input_ids: torch.Tensor,
    inputs_embeds: torch.Tensor,
    audio_embeds: torch.Tensor,
    placeholder_id: int,
    placeholder_name: str,
    packed_lengths: torch.Tensor | None = None,
) -> torch.Tensor:
    """``inputs_embeds`` with each row's placeholders replaced by that row's first frames of ``audio_embeds`` (B,
    N_max, H); an error when a row has more placeholders than its audio has frames."""
    placeholder = input_ids == placeholder_id
    counts = placeholder_counts(placeholder, packed_lengths)
    if audio_embeds.size(0) != len(counts):
        raise ValueError(f"audio for {audio_embeds.size(0)} rows given with {len(counts)} token rows")
    too_many = (counts > audio_embeds.size(1)).nonzero().flatten().tolist()
    if too_many:
        b = too_many[0]
        raise ValueError(
            f"row {b} has {int(counts[b])} {placeholder_name} placeholders but its audio gives only "
            f"{audio_embeds.size(1)} frames"
        )
    keep = torch.arange(audio_embeds.size(1), device=counts.device).unsqueeze(0) < counts.unsqueeze(1)
    frames = audio_embeds[keep.to(audio_embeds.device)].to(inputs_embeds.device, inputs_embeds.dtype)
    return inputs_embeds.masked_scatter(placeholder.unsqueeze(-1), frames)  # rows in order, frames in order


def sampled_token_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Linear,
    labels: torch.Tensor,
    sampling: SamplingDistribution,
    entropy: bool,
    outside: bool,
) -> SampledTokenOutput:
    """The sampled tokens' log-probs (and entropies, outside mass) for ``labels`` (B, T), from hidden states (B, T,
    H) and the LM head (module docstring)."""
    hidden, labels = hidden[:, :-1], labels[:, 1:].to(hidden.device)  # position t predicts token t + 1
    mask = labels != -100
    weight = lm_head.weight
    if hasattr(weight, "full_tensor"):  # an FSDP2-sharded head (DTensor): the projection needs every vocab row
        weight = weight.full_tensor()
    # The head runs in its own dtype, outside autocast: bf16 weights give generate's bf16 logits, and a head
    # cast to float32 (TRL's cast_lm_head_to_fp32) stays float32
    with torch.autocast(hidden.device.type, enabled=False):
        scored = token_logprobs(
            hidden[mask], weight, labels[mask], sampling, with_entropy=entropy, with_outside_mass=outside
        )

    def spread(values: torch.Tensor | None) -> torch.Tensor | None:
        # masked_scatter keeps an all-masked micro-batch connected to the graph (a differentiable zero)
        return None if values is None else values.new_zeros(mask.shape).masked_scatter(mask, values)

    return SampledTokenOutput(
        log_probs=spread(scored.log_probs),
        entropy=spread(scored.entropy),
        outside_mass=spread(scored.outside_mass),
        label_mask=mask,
    )


def causal_lm_output(
    model,
    outputs,
    vocab_size: int,
    logits_to_keep: int | torch.Tensor = 0,
    labels: torch.Tensor | None = None,
    logprob_labels: torch.Tensor | None = None,
    sampling: SamplingDistribution | None = None,
    logprob_entropy: bool = False,
    logprob_outside_mass: bool = False,
):
    """A policy's output from its backbone's: the sampled tokens' log-probs when ``logprob_labels`` are given
    (``sampled_token_logprobs``), else the usual ``CausalLMOutputWithPast`` (logits of the last ``logits_to_keep``
    positions, the loss against ``labels``)."""
    hidden = outputs.last_hidden_state
    if logprob_labels is not None:
        return sampled_token_logprobs(
            hidden, model.lm_head, logprob_labels, sampling or SamplingDistribution(), logprob_entropy,
            logprob_outside_mass,
        )  # fmt: skip
    keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
    logits = model.lm_head(hidden[:, keep, :])
    loss = None
    if labels is not None:
        loss = model.loss_function(logits=logits, labels=labels, vocab_size=vocab_size)
    return CausalLMOutputWithPast(
        loss=loss, logits=logits, past_key_values=outputs.past_key_values, hidden_states=outputs.hidden_states
    )


__all__ = [
    "SampledTokenOutput",
    "causal_lm_output",
    "placeholder_counts",
    "sampled_token_logprobs",
    "splice_audio_rows",
]
