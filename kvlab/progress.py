"""Progress bars for long runs (tqdm's notebook-aware bar), or none when switched off."""
from __future__ import annotations


def progress_bar(total: int, enabled: bool, desc: str, unit: str):
    """A bar of `total` steps to `.update(n)` and `.close()`, or None when not enabled."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit)


def with_progress(items, enabled: bool, desc: str, unit: str):
    """`items`, iterated under a bar when enabled."""
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit=unit)
