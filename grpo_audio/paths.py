"""How a path that does not exist is reported: a relative one with the absolute path tried and what it was
relative to, so that a command started from another directory says where it looked. Standard library only.

    data.path: file not found: data/x.json (tried /home/u/data/x.json, relative to the current directory /home/u)
"""

from __future__ import annotations

import os
from pathlib import Path


def tried(path: str | os.PathLike, base: str | os.PathLike | None = None, base_name: str = "the current directory"):
    """`` (tried ABSOLUTE, relative to BASE_NAME BASE)`` for a relative ``path``, to append to a "not found" message;
    empty for an absolute one. ``base``: the directory it is relative to (None: the current directory)."""
    if Path(path).is_absolute():
        return ""
    where = os.path.abspath(os.getcwd() if base is None else base)
    return f" (tried {os.path.normpath(os.path.join(where, path))}, relative to {base_name} {where})"
