"""grpo-audio: a config-driven GRPO training harness for large audio language models (first of all Covo-Audio)."""

__version__ = "0.1.0"
