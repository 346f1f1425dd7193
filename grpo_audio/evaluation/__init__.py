"""Benchmark evaluation: official scoring rules (``scoring``), per-slice metrics and reports (``metrics``), the
batched decoding run (``runner``) and the ``grpo-audio eval`` command (``cli``)."""
