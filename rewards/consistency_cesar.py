"""consistency_cesar in [0, 1]: RULE-BASED concept-overlap consistency from CESAR (no LLM involved).

    r = mean(overlap(think, answer), overlap(think, question))
    overlap(x, y) = |C(x) ∩ C(y)| / max(|C(x)|, |C(y)|)

with C the concept extractor of ``rewards.concepts`` (content words, stop words removed, light stemming). When the
extracted answer resolves to a choice (``"B"`` -> its text) the choice text is used for C(answer); a row without a
question uses the answer term only.

Deviations from CESAR: the paper adds the two overlaps; ``aggregate="mean"`` (default) keeps the reward in [0, 1]
like the other terms, ``aggregate="sum"`` gives the paper's [0, 2] sum. CESAR's concept extractor is not published;
ours is documented in ``rewards.concepts``. Note that the max() denominator makes long reasoning score low against a
short answer; that is the formula, and CESAR pairs it with the overthinking term.

None when there is no reasoning (no or blank ``<think>`` section: consistency does not apply); 0.0 when the
``<think>`` was never closed (truncated).

Example: think "Two dogs are barking loudly", answer "dog barking", no question: C(think) = {two, dog, bark,
loudly}, C(answer) = {dog, bark}, r = 2 / 4 = 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rewards import _checks
from rewards.answer_span import no_reasoning_verdict, parse_completion
from rewards.concepts import concepts, overlap
from rewards.matching import resolve_choice
from rewards.registry import register_reward


def validate(options: Mapping[str, Any]) -> None:
    _checks.choice(options, "aggregate", ("mean", "sum"))
    _checks.boolean(options, "think_prefilled")


@register_reward("consistency_cesar", validate=validate)
def score(
    completion: str, sample: Mapping[str, Any], think_prefilled: bool = False, aggregate: str = "mean"
) -> float | None:
    parsed = parse_completion(completion, think_prefilled)
    if not parsed.thinks:
        return no_reasoning_verdict(parsed)
    answer = parsed.answer
    choices = sample.get("choices")
    if choices and answer:
        index = resolve_choice(answer, [str(c) for c in choices])
        if index is not None:
            answer = str(choices[index])
    think_concepts = concepts(parsed.think or "")
    parts = [overlap(think_concepts, concepts(answer))]
    question = sample.get("question")
    if question:
        parts.append(overlap(think_concepts, concepts(str(question))))
    return sum(parts) if aggregate == "sum" else sum(parts) / len(parts)
