"""Judge prompt templates: versioned text files in ``prompts/judge/`` named ``{kind}_{version}.txt``.

Templates use ``string.Template`` placeholders (``$question``, ``$choices``, ``$reasoning``, ``$answer``), so braces
in model output or in the template need no escaping. A new wording is a new file (``consistency_v2.txt``) selected
with ``prompt_version: v2``; old versions stay so that past runs remain reproducible. ``prompt_path`` points at any
other file; its version id then includes a hash of its content, so editing it invalidates cached verdicts.

The policy's text is sanitised before it is put into a prompt: ``<score>`` tags are defanged (``<score>`` ->
``[score]``) so a completion cannot plant a verdict for the judge to echo, and reasoning longer than
``max_reasoning_chars`` keeps its head and tail around a ``[... N characters omitted ...]`` marker.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from pathlib import Path
from string import Template

_ROOT = Path(__file__).resolve().parents[2]


def _prompts_dir() -> Path:
    # A source checkout keeps prompts/ next to rewards/; the wheel ships it as grpo_audio/_shipped/prompts.
    for candidate in (_ROOT / "prompts" / "judge", _ROOT / "grpo_audio" / "_shipped" / "prompts" / "judge"):
        if candidate.is_dir():
            return candidate
    return _ROOT / "prompts" / "judge"


PROMPTS_DIR = _prompts_dir()
_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_SCORE_TAG = re.compile(r"<(/?)score>", re.IGNORECASE)


def load_template(kind: str, version: str = "v1", path: str | Path | None = None) -> tuple[Template, str]:
    """The template and the version id used in cache keys."""
    if path is not None:
        file = Path(path)
        text = file.read_text(encoding="utf-8")
        return Template(text), f"file:{file.name}:{hashlib.sha256(text.encode()).hexdigest()[:12]}"
    file = PROMPTS_DIR / f"{kind}_{version}.txt"
    if not file.is_file():
        available = sorted(p.stem for p in PROMPTS_DIR.glob(f"{kind}_*.txt"))
        raise ValueError(f"no judge prompt {file} (available for {kind!r}: {available})")
    return Template(file.read_text(encoding="utf-8")), version


def sanitise(text: str, max_chars: int | None = None) -> str:
    text = _SCORE_TAG.sub(lambda m: f"[{m.group(1)}score]", text.strip())
    if max_chars is not None and len(text) > max_chars:
        head = max_chars // 2
        tail = max_chars - head
        text = f"{text[:head]}\n[... {len(text) - max_chars} characters omitted ...]\n{text[-tail:]}"
    return text


def format_choices(choices: Sequence[str] | None) -> str:
    if not choices:
        return "(none: open question)"
    return "\n".join(f"({_LETTERS[i] if i < 26 else i + 1}) {c}" for i, c in enumerate(choices))


def render(
    template: Template,
    *,
    question: str,
    choices: Sequence[str] | None,
    reasoning: str,
    answer: str,
    max_reasoning_chars: int | None = None,
) -> str:
    return template.substitute(
        question=sanitise(question) or "(no question text)",
        choices=format_choices([sanitise(str(c)) for c in choices] if choices else None),
        reasoning=sanitise(reasoning, max_reasoning_chars),
        answer=sanitise(answer, max_reasoning_chars) or "(empty)",
    )
