"""A text corpus every machine already has: the docstrings of Python's standard library, gathered at run time.

Nothing is downloaded and no text is committed: the docstrings of public functions and classes of a fixed
list of modules, read with `inspect.getdoc` now, in a fixed order, cut into token windows for perplexity.
(The exact text follows the Python version, so results are measured, never copied.)
"""
from __future__ import annotations

import importlib
import inspect

from .checks import positive_int

CORPUS_MODULES = ("json", "csv", "statistics", "heapq", "itertools", "collections", "argparse", "subprocess", "re",
                  "random", "string", "textwrap", "difflib", "pickle", "sqlite3", "unittest", "inspect", "functools",
                  "datetime", "pathlib", "shutil", "tempfile", "logging", "threading", "decimal", "fractions")
MIN_DOC_CHARS = 300


def stdlib_docstrings(modules=CORPUS_MODULES, min_chars: int = MIN_DOC_CHARS) -> list[tuple[str, str]]:
    """(qualified name, docstring) of each public module-level function or class with at least `min_chars`
    characters of docstring, in module order, then by name."""
    found = []
    for module_name in modules:
        module = importlib.import_module(module_name)
        for name in sorted(vars(module)):
            member = getattr(module, name)
            if name.startswith("_") or not (inspect.isfunction(member) or inspect.isclass(member)):
                continue
            if getattr(member, "__module__", None) != module_name:
                continue  # re-exported from elsewhere: counted once, where it is defined
            doc = inspect.getdoc(member)
            if doc and len(doc) >= min_chars:
                found.append((f"{module_name}.{name}", doc))
    if not found:
        raise RuntimeError("no standard-library docstrings found (is Python running with -OO?)")
    return found


def perplexity_windows(tokenizer, num_windows: int = 8, tokens_per_window: int = 256) -> list[list[int]]:
    """`num_windows` windows of `tokens_per_window` token ids, spread evenly over the whole corpus (all the
    docstrings joined by blank lines), so that they sample many modules, not the first one."""
    positive_int("num_windows", num_windows)
    positive_int("tokens_per_window", tokens_per_window)
    ids = tokenizer.encode("\n\n".join(doc for _, doc in stdlib_docstrings()))
    available = len(ids) // tokens_per_window
    if available < num_windows:
        raise ValueError(f"the corpus has {len(ids)} tokens: only {available} windows of {tokens_per_window} tokens, "
                         f"asked for {num_windows}")
    starts = [round(i * (available - 1) / max(1, num_windows - 1)) * tokens_per_window for i in range(num_windows)]
    return [ids[s: s + tokens_per_window] for s in starts]
