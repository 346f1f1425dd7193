"""Verdict cache keyed on (judge model, prompt version, rendered prompt text).

The key is the SHA-256 of the JSON list ``[model, prompt_version, text]``, where ``text`` is the full rendered judge
prompt (question, choices, reasoning, answer, and the template itself), so a change to any of them is a miss. Only
successful verdicts are cached; failures are retried next time.

With a ``path`` the cache persists as JSON lines ``{"key", "model", "prompt_version", "value", "reply"}`` appended
as verdicts arrive and read back on start, so a resumed run or a re-scored file does not pay for the same verdict
twice. Unreadable lines (e.g. the last line of a killed process) are skipped and counted in ``corrupt_lines``.
Appends of one short line are atomic on local file systems, so several processes may share a file.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

CHECKPOINT_DIR = "judge_cache"  # the caches' copy inside a training checkpoint
_REPLY_CHARS = 4000  # keep the judge's reply for audits, bounded so the file stays small


class JudgeCache:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._values: dict[str, float] = {}
        self._lock = threading.Lock()
        self.corrupt_lines = 0
        if self.path is not None and self.path.exists():
            self._load()

    @staticmethod
    def key(model: str, prompt_version: str, text: str) -> str:
        return hashlib.sha256(json.dumps([model, prompt_version, text]).encode()).hexdigest()

    def _load(self) -> None:
        assert self.path is not None
        with self.path.open(encoding="utf-8") as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    self._values[str(entry["key"])] = float(entry["value"])
                except (ValueError, KeyError, TypeError):
                    self.corrupt_lines += 1

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: str) -> float | None:
        """The cached verdict, or None on a miss (verdicts themselves are never None)."""
        return self._values.get(key)

    def put(self, key: str, value: float, *, model: str, prompt_version: str, reply: str = "") -> None:
        with self._lock:
            self._values[key] = value
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            entry = {
                "key": key, "model": model, "prompt_version": prompt_version, "value": value,
                "reply": reply[:_REPLY_CHARS],
            }  # fmt: skip
            with self.path.open("a", encoding="utf-8") as handle:
                handle.write(json.dumps(entry, ensure_ascii=False) + "\n")


def save_judge_caches(files: list[Path], checkpoint: Path) -> None:
    """Copy the verdict cache files into ``checkpoint/judge_cache/<index>-<name>`` (a resume then pays no judge
    call twice)."""
    for index, file in enumerate(files):
        if file.is_file():
            target = Path(checkpoint) / CHECKPOINT_DIR / f"{index}-{file.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, target)


def restore_judge_caches(files: list[Path], checkpoint: Path) -> list[Path]:
    """On resume, put back each cache file that the crash lost (an existing one is newer and is kept); returns the
    files restored."""
    restored = []
    for index, file in enumerate(files):
        saved = Path(checkpoint) / CHECKPOINT_DIR / f"{index}-{file.name}"
        if saved.is_file() and not file.exists():
            file.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(saved, file)
            restored.append(file)
    return restored
