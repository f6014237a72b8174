"""Prompts that speculation is measured on: input-grounded ones, whose answer repeats the input (prompt lookup's
case), and open-ended ones, whose answer does not. Chat-formatted for SmolLM2-Instruct."""
from __future__ import annotations

import inspect
import textwrap

from ..scenarios import clip_to_tokens

CODE = textwrap.dedent('''\
    def moving_average(values, n):
        """The mean of each window of n consecutive values."""
        out = []
        for i in range(len(values) - n + 1):
            window = values[i:i + n]
            out.append(sum(window) / n)
        return out
''')


def _passage(tokenizer, max_tokens: int = 120) -> str:
    import json

    return clip_to_tokens(inspect.getdoc(json), tokenizer, max_tokens)


def spec_prompts(tokenizer) -> dict[str, tuple[str, str]]:
    """name → (kind "grounded" | "open", the chat-formatted prompt)."""
    passage = _passage(tokenizer)
    raw = {
        "quote a passage": ("grounded", f"Copy this text exactly, word for word:\n\n{passage}"),
        "edit given code": ("grounded", "Rename the parameter `n` to `size` everywhere in this function and reply "
                                        f"with the whole function:\n\n{CODE}"),
        "summarise a passage": ("grounded", f"Summarise this text in three sentences, reusing its words:\n\n{passage}"),
        "write a poem": ("open", "Write a short poem about the sea at night."),
        "invent a story": ("open", "Invent a fantasy tavern: its name, its owner and one strange rule."),
    }
    return {name: (kind, tokenizer.apply_chat_template(text)) for name, (kind, text) in raw.items()}
