"""Where promptkit keeps what it derives once: converted models, fetched datasets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    """``$PROMPTKIT_CACHE`` (default: the user's cache directory) joined with ``parts``, created."""
    root = os.environ.get("PROMPTKIT_CACHE")
    if root:
        base = Path(root).expanduser()
    else:
        import platformdirs

        base = Path(platformdirs.user_cache_dir("promptkit"))
    path = base.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
