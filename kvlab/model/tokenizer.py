"""The tokenizer and chat template stored inside the GGUF file.

The file says `tokenizer.ggml.model = gpt2` (byte-level BPE) and `tokenizer.ggml.pre = smollm`:
digits are split one by one, then GPT-2's regex splits words. Tokens typed CONTROL (3) are special
tokens such as `<|im_start|>` and are never split.
"""
from __future__ import annotations

from tokenizers import AddedToken, Tokenizer as _HFTokenizer, decoders, models, pre_tokenizers

CONTROL_TOKEN_TYPE = 3


def build_backend(tokens: list[str], token_types: list[int], merges: list[str]) -> _HFTokenizer:
    vocab = {token: index for index, token in enumerate(tokens)}
    merge_pairs = [tuple(merge.split(" ", 1)) for merge in merges]
    backend = _HFTokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    backend.decoder = decoders.ByteLevel()
    specials = [tok for tok, kind in zip(tokens, token_types) if kind == CONTROL_TOKEN_TYPE]
    backend.add_special_tokens([AddedToken(tok, special=True, normalized=False) for tok in specials])
    return backend


class Tokenizer:
    """Text ⇄ token ids, plus the model's chat template."""

    def __init__(self, backend: _HFTokenizer, chat_template: str | None, bos_token_id: int,
                 eos_token_id: int, add_bos: bool):
        self.backend = backend
        self.chat_template = chat_template
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.add_bos = add_bos

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        ids = self.backend.encode(text, add_special_tokens=False).ids
        return [self.bos_token_id, *ids] if self.add_bos else ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def token_text(self, token_id: int) -> str:
        """One token as readable text (special tokens kept)."""
        return self.backend.decode([token_id], skip_special_tokens=False)

    def token_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(self, messages: list[dict] | str, add_generation_prompt: bool = True) -> str:
        """Render messages ([{'role': 'user', 'content': ...}] or one user string) with the file's template."""
        if self.chat_template is None:
            raise ValueError("this model file has no chat template")
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(
            messages=messages, add_generation_prompt=add_generation_prompt,
            bos_token=self.token_text(self.bos_token_id), eos_token=self.token_text(self.eos_token_id),
        )

    def to_state(self) -> dict:
        return {"backend_json": self.backend.to_str(), "chat_template": self.chat_template,
                "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "add_bos": self.add_bos}

    @classmethod
    def from_state(cls, state: dict) -> "Tokenizer":
        backend = _HFTokenizer.from_str(state["backend_json"])
        return cls(backend, state["chat_template"], state["bos_token_id"], state["eos_token_id"], state["add_bos"])

    @classmethod
    def from_gguf_metadata(cls, meta: dict) -> "Tokenizer":
        model_kind = meta.get("tokenizer.ggml.model")
        if model_kind != "gpt2":
            raise ValueError(f"kvlab reads byte-level BPE ('gpt2') tokenizers; this file has {model_kind!r}")
        backend = build_backend(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"],
                                meta["tokenizer.ggml.merges"])
        return cls(backend, meta.get("tokenizer.chat_template"), int(meta["tokenizer.ggml.bos_token_id"]),
                   int(meta["tokenizer.ggml.eos_token_id"]), bool(meta.get("tokenizer.ggml.add_bos_token", False)))
