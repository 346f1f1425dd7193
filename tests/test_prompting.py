"""Prompt rendering: a tokenizer without a chat template gets Covo-Audio's ChatML (covo_audio.md), logged once."""

import logging

import pytest

from grpo_audio.data import prompting
from grpo_audio.data.prompting import load_template, render_prompt
from grpo_audio.model.tokenizer import build_tiny_tokenizer

CHOICES = ["high", "low"]


def expected_chatml(system: str, user: str, n: int) -> str:
    """The released inference code's prompt, written out by hand."""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<|begofcAUDIO|>{'<|cAUDIO|>' * n}<|endofcAUDIO|>"
        f"{user}<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.fixture
def template_less():
    tokenizer = build_tiny_tokenizer(["is the tone high or low?"], vocab_size=300)
    tokenizer.chat_template = None  # as the released tokenizer may ship
    return tokenizer


@pytest.mark.parametrize("name", ["audio_cot_v1", "mmsu_v1"])
def test_a_tokenizer_without_a_chat_template_renders_covo_chatml(template_less, name, monkeypatch, caplog):
    monkeypatch.setattr(prompting, "_warned_no_template", False)
    template = load_template(name)
    with caplog.at_level(logging.WARNING, logger="grpo_audio.data.prompting"):
        first = render_prompt(template_less, template, "Is the tone high?", CHOICES, 7)
        second = render_prompt(template_less, template, "Is the tone low?", CHOICES, 3)
    assert first == expected_chatml(template.system, template.user_text("Is the tone high?", CHOICES), 7)
    assert second == expected_chatml(template.system, template.user_text("Is the tone low?", CHOICES), 3)
    warnings = [r for r in caplog.records if "has no chat template" in r.getMessage()]
    assert len(warnings) == 1  # once per process, not once per row


def test_a_tokenizer_with_a_chat_template_keeps_it(template_less, monkeypatch, caplog):
    monkeypatch.setattr(prompting, "_warned_no_template", False)
    template_less.chat_template = "{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}{% endfor %}"
    with caplog.at_level(logging.WARNING, logger="grpo_audio.data.prompting"):
        text = render_prompt(template_less, load_template("audio_cot_v1"), "Q?", CHOICES, 1)
    assert text.startswith("[system]") and "<|im_start|>" not in text
    assert not caplog.records
