"""An offline Qwen2-style tokenizer for tiny models: byte-level BPE + Covo-Audio's special tokens + ChatML.

The released tokenizer (Qwen2.5 vocabulary, 151,671 entries) cannot be downloaded here, so tiny models get one
built in process with the same structure: byte-level BPE (so any text round-trips), the ChatML and audio special
tokens of Covo-Audio appended after the text vocabulary in the released order, and a ChatML chat template. The
token *ids* differ from the released ones; code reads them from the tokenizer, never hard-codes them.

Training the BPE merges on a fixed corpus is deterministic (same corpus, same merges), so two builds agree.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO_PLACEHOLDER = "<|cAUDIO|>"
AUDIO_BEGIN = "<|begofcAUDIO|>"
AUDIO_END = "<|endofcAUDIO|>"

# Order matters only for readability of ids; all are registered as special (never split, kept whole).
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, AUDIO_BEGIN, AUDIO_PLACEHOLDER, AUDIO_END]
AUDIO_SPECIAL_TOKENS = (AUDIO_BEGIN, AUDIO_PLACEHOLDER, AUDIO_END)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def build_tiny_tokenizer(
    corpus: list[str],
    vocab_size: int = 512,
    audio_tokens: tuple[str, ...] = AUDIO_SPECIAL_TOKENS,
    chat_template: str = CHATML_TEMPLATE,
    extra_special_tokens: tuple[str, ...] = (),
) -> PreTrainedTokenizerFast:
    """Byte-level BPE with at most ``vocab_size`` text entries (256 bytes + merges) trained on ``corpus``, then
    ``<|endoftext|>`` (EOS and pad), ``<|im_start|>``, ``<|im_end|>`` and a family's ``audio_tokens`` (Covo-Audio's by
    default) and ``extra_special_tokens`` (Qwen2.5-Omni's vision tokens), with a family's ``chat_template``.

    ``len(tokenizer)`` = text entries + 3 + len(audio_tokens) + len(extra_special_tokens); for Covo-Audio, as in the
    release, that is also the first id that a model may use for discrete speech tokens.
    """
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    backend.train_from_iterator(corpus, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END, *audio_tokens, *extra_special_tokens],
        chat_template=chat_template,
        clean_up_tokenization_spaces=False,
    )
    tokenizer.add_special_tokens(
        {"additional_special_tokens": [IM_START, IM_END, *audio_tokens, *extra_special_tokens]}
    )
    return tokenizer


def check_covo_tokens(tokenizer, source: str) -> dict[str, int]:
    """Ids of the tokens the harness relies on; a tokenizer lacking one is rejected naming ``source``."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"{source}: tokenizer lacks the Covo-Audio special token(s) {missing}")
    return {t: vocab[t] for t in SPECIAL_TOKENS}
