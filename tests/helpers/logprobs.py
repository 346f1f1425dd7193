"""Reference log-probs by teacher forcing, for checking what the rollout engines report."""

from __future__ import annotations

import torch


@torch.no_grad()
def teacher_forced_logprobs(
    model,
    prompt_embeds: torch.Tensor,
    completion: list[int],
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    first_banned: int | None = None,
    banned: list[int] = (),
) -> list[float]:
    """Log-prob of each completion token under the processed distribution it was sampled from: ids >=
    ``first_banned`` and ``banned`` masked, then temperature, then top-k (the order both engines apply)."""
    tokens = torch.tensor(completion)
    embeds = torch.cat([prompt_embeds.to(model.dtype), model.get_input_embeddings()(tokens[:-1])])[None]
    logits = model(inputs_embeds=embeds).logits[0, prompt_embeds.size(0) - 1 :].float()
    if first_banned is not None:
        logits[:, first_banned:] = float("-inf")
    logits[:, list(banned)] = float("-inf")
    logits = logits / temperature
    if top_k:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1).tolist()
