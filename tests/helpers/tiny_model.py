"""The tiny Covo-Audio models the tests build, each written once.

* ``tiny_tokenizer`` and ``tiny_model``: the unit tests' fixed pair, a byte-level BPE of ``TEXT_ENTRIES`` text
  entries trained on ``CORPUS`` and the recipe's default tiny model (``TinyModelSpec()``) from seed 0, in eval mode
  (no dropout, so two forwards agree). tests/conftest.py serves them as the fixtures ``tokenizer`` and ``model``.
* ``harness_tokenizer_and_model``: what ``grpo-audio train`` and ``grpo-audio eval`` build for a set of rows
  (``grpo_audio.model.build``, the recipe's defaults plus overrides): the model a test saves as a pretrained source.
"""

from __future__ import annotations

from grpo_audio.data.prompting import load_template
from grpo_audio.data.vocabulary import vocabulary_texts
from grpo_audio.model.build import build_tokenizer_and_model
from grpo_audio.model.tiny import build_tiny_model, build_tiny_tokenizer, tiny_tokenizer_corpus
from grpo_audio.recipe import load_recipe
from grpo_audio.recipe.schema import TinyModelSpec

CORPUS = tiny_tokenizer_corpus(["How many beeps are in this clip?", "high low one two three first second"] * 4)
TEXT_ENTRIES = 300  # 256 bytes + merges; the Covo-Audio special tokens follow


def tiny_tokenizer(text_entries: int = TEXT_ENTRIES):
    """The BPE over ``CORPUS`` with ``text_entries`` text entries, then the Covo-Audio special tokens (so
    ``audio_token_index`` = ``text_entries`` + 3 + the audio markers: a different count moves every special id)."""
    return build_tiny_tokenizer(CORPUS, text_entries)


def tiny_model(tokenizer, spec: TinyModelSpec | None = None, seed: int = 0):
    """The tiny Covo-Audio of ``spec`` (the recipe's default widths when None) for ``tokenizer``, initialised from
    ``seed``, in eval mode."""
    return build_tiny_model(spec or TinyModelSpec(), tokenizer, seed).eval()


def harness_tokenizer_and_model(rows, *overrides: str):
    """``(tokenizer, model)`` as the harness builds them for ``rows`` under the recipe's defaults plus ``overrides``
    (``model.tiny.hidden_size=128``...): the tokenizer trained on the prompt template's and the rows' texts."""
    recipe = load_recipe(None, list(overrides))
    texts = vocabulary_texts(rows, load_template(recipe.prompt.template))
    return build_tokenizer_and_model(recipe.model, recipe.run.seed, texts)
