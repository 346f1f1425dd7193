"""Where the shipped ``prompts/`` and ``configs/`` directories are: inside the installed wheel
(``grpo_audio/_shipped/``), or next to the package in a source checkout / editable install."""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    for candidate in (_PACKAGE_DIR / "_shipped" / name, _PACKAGE_DIR.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"the shipped '{name}/' directory is missing from this installation")
