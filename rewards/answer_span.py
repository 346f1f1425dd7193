"""Split a chain-of-thought completion into its reasoning and its final answer.

``extract_answer(completion)``: the content of the last innermost ``<answer>...</answer>`` pair (DOTALL, stray
``<think>``/``<answer>`` tags inside it removed, surrounding whitespace stripped). Fallback when no complete pair
exists: the text after the last ``</think>`` if there is one, else the whole completion, again with stray tags
removed. The fallback lets a model that forgot the tags still be scored by the benchmark's own matching rule (which
rejects answers polluted with reasoning), as benchmark scripts do with raw model output; the evaluation scores this
way. ``tagged_answer(completion)`` is the span alone (None without a pair): what the accuracy reward reads in
training by default, so that a tagless completion that happens to name the right choice earns nothing.

``parse_completion(completion, think_prefilled=False)`` gives the reasoning too, as a ``ParsedCompletion``:

* ``think``: the concatenated contents of all ``<think>...</think>`` pairs, or ``None`` when there is no closed pair;
* ``think_open``: a ``<think>`` was opened but never closed (a truncated completion);
* ``thinks``: the reasoning is present and not blank. A blank ``<think></think>`` counts as *no thinking* (Qwen3-style
  models emit an empty pair when they skip reasoning), which is what the adaptive-thinking rewards need.

``think_prefilled=True`` is for prompt templates that end with ``<think>``: the completion starts inside the
reasoning, so the opening tag is put back (unless the model wrote it again anyway).

``no_reasoning_verdict(parsed)`` is the shared rule of the rewards that score the reasoning, for a completion whose
``thinks`` is False: 0.0 when the ``<think>`` was never closed (truncated: the reasoning reached no conclusion), None
when there is no reasoning (no or blank ``<think>`` section: the reward does not apply).

Example: ``parse_completion("<think>a dog barks</think><answer>dog</answer>")`` has think ``"a dog barks"``, answer
``"dog"`` and ``thinks`` True.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TAGS = re.compile(r"</?(?:think|answer)>")


def tag_pairs(text: str, open_tag: str, close_tag: str) -> list[str]:
    """Contents of the innermost ``open_tag ... close_tag`` pairs, in order.

    Each closing tag pairs with the nearest opening tag before it (after the previous pair), so
    ``"<answer>x <answer>Man</answer></answer>"`` yields ``["Man"]`` and duplicated pairs yield one entry each.
    A linear ``str.find`` scan: a regex with a tempered token costs far more on long completions.
    """
    contents: list[str] = []
    pos = 0
    while True:
        close = text.find(close_tag, pos)
        if close < 0:
            return contents
        start = text.rfind(open_tag, pos, close)
        if start >= 0:
            contents.append(text[start + len(open_tag) : close])
        pos = close + len(close_tag)


def strip_tags(text: str) -> str:
    """Remove stray ``<think>``, ``</think>``, ``<answer>``, ``</answer>`` tags and surrounding whitespace."""
    return _TAGS.sub(" ", text).strip()


def add_prefilled_think(completion: str) -> str:
    """Put back the ``<think>`` that the prompt template already emitted (once, not twice)."""
    if completion.lstrip().startswith("<think>"):
        return completion
    return "<think>" + completion


def tagged_answer(completion: str) -> str | None:
    """The content of the last innermost ``<answer>`` pair (stray tags removed, stripped); None without a pair."""
    spans = tag_pairs(completion, "<answer>", "</answer>")
    return strip_tags(spans[-1]) if spans else None


def extract_answer(completion: str) -> str:
    tagged = tagged_answer(completion)
    if tagged is not None:
        return tagged
    if "</think>" in completion:
        return strip_tags(completion.rsplit("</think>", 1)[1])
    return strip_tags(completion)


@dataclass(frozen=True)
class ParsedCompletion:
    think: str | None
    think_open: bool
    answer: str
    has_answer_tags: bool

    @property
    def thinks(self) -> bool:
        return self.think is not None and bool(self.think.strip())


def extract_think(completion: str, think_prefilled: bool = False) -> str | None:
    """Contents of all closed ``<think>`` pairs joined by a newline (nested tags removed), or None if none."""
    text = add_prefilled_think(completion) if think_prefilled else completion
    spans = tag_pairs(text, "<think>", "</think>")
    if not spans:
        return None
    return "\n".join(strip_tags(s) for s in spans)


def no_reasoning_verdict(parsed: ParsedCompletion) -> float | None:
    """A reasoning reward's value when ``parsed.thinks`` is False: 0.0 for an unclosed ``<think>``, else None."""
    return 0.0 if parsed.think_open else None


def parse_completion(completion: str, think_prefilled: bool = False) -> ParsedCompletion:
    text = add_prefilled_think(completion) if think_prefilled else completion
    think = extract_think(text)
    think_open = think is None and "<think>" in text
    answers = tag_pairs(text, "<answer>", "</answer>")
    return ParsedCompletion(
        think=think,
        think_open=think_open,
        answer=strip_tags(answers[-1]) if answers else extract_answer(text),
        has_answer_tags=bool(answers),
    )
