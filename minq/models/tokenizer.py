"""The testbed's tokenizers, built with the ``tokenizers`` library: SmolLM2's byte-level BPE from a GGUF
file's metadata (``Tokenizer``), and MiniLM's WordPiece from its ``tokenizer.json`` (``BertTokenizer``).

A GPT-2 style byte-level BPE (``tokenizer.ggml.model == "gpt2"``) is fully described by:

- ``tokenizer.ggml.tokens``: the vocabulary, id -> token, spelled in GPT-2's byte alphabet (every
  byte 0..255 is mapped to a printable character, e.g. the space byte to ``Ġ``);
- ``tokenizer.ggml.merges``: the BPE merge rules ``"a b"`` in priority order;
- ``tokenizer.ggml.pre``: how text is split into words before BPE runs (the pre-tokenizer regex);
- ``tokenizer.ggml.token_type``: 3 = control (``<|im_start|>``, matched whole, special), 4 =
  user-defined (matched whole); ``bos/eos_token_id``; ``add_bos_token``.

Encoding = split text with the pre-tokenizer -> map each word's UTF-8 bytes to the byte alphabet ->
apply merges, lowest rank first, until none applies -> look the pieces up. Decoding reverses the byte
alphabet. Reference: Sennrich et al., "Neural Machine Translation of Rare Words with Subword Units"
(2016); Radford et al., GPT-2 (2019) for the byte-level variant.
"""

from __future__ import annotations

import numpy as np

__all__ = ["Tokenizer", "BertTokenizer", "PRE_TOKENIZERS"]

# GPT-2's word-splitting rule (what tokenizers' ByteLevel(use_regex=True) applies).
_GPT2 = "gpt2"
# Llama 3's rule: case-insensitive contractions, digits in runs of at most 3, newlines apart.
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

# tokenizer.ggml.pre -> (split every digit apart first?, split regex or the GPT-2 rule)
PRE_TOKENIZERS = {
    "default": (False, _GPT2),
    "gpt2": (False, _GPT2),
    "smollm": (True, _GPT2),      # SmolLM: each digit is its own word, then GPT-2's rule
    "starcoder": (True, _GPT2),
    "llama-bpe": (False, _LLAMA3_SPLIT),
    "llama3": (False, _LLAMA3_SPLIT),
}

_CONTROL, _USER_DEFINED = 3, 4


class Tokenizer:
    """Byte-level BPE tokenizer. ``encode(text) -> list[int]``, ``decode(ids) -> str``."""

    def __init__(self, tokens, merges, *, pre: str = "default", token_types=None, bos_id=None,
                 eos_id=None, add_bos: bool = False, chat_template=None):
        from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as _HFTokenizer

        if pre not in PRE_TOKENIZERS:
            raise ValueError(f"unsupported pre-tokenizer {pre!r} (tokenizer.ggml.pre); "
                             f"supported: {', '.join(PRE_TOKENIZERS)}")
        self.tokens = list(tokens)
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, bool(add_bos)
        if chat_template is not None and not isinstance(chat_template, str):
            raise TypeError(f"chat_template must be a str (a Jinja template) or None, got {type(chat_template).__name__}")
        self.chat_template = chat_template
        vocab = {t: i for i, t in enumerate(self.tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        tk = _HFTokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
        digits, split = PRE_TOKENIZERS[pre]
        steps = [pre_tokenizers.Digits(individual_digits=True)] if digits else []
        if split == _GPT2:
            steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
        else:
            steps += [pre_tokenizers.Split(Regex(split), behavior="isolated"),
                      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        tk.pre_tokenizer = pre_tokenizers.Sequence(steps)
        tk.decoder = decoders.ByteLevel()
        types = list(token_types) if token_types is not None else [1] * len(self.tokens)
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t, ty in zip(self.tokens, types) if ty == _CONTROL])
        tk.add_tokens([AddedToken(t, special=False, normalized=False)
                       for t, ty in zip(self.tokens, types) if ty == _USER_DEFINED])
        self._tk = tk

    @classmethod
    def from_gguf_metadata(cls, metadata: dict) -> Tokenizer:
        """Build from the ``tokenizer.ggml.*`` keys of a GGUF file (``minq.gguf.read_gguf(...).metadata``)."""
        kind = metadata.get("tokenizer.ggml.model")
        if kind != "gpt2":
            raise ValueError(f"unsupported tokenizer.ggml.model {kind!r}: minq builds byte-level BPE "
                             f"('gpt2') tokenizers only")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):
            if key not in metadata:
                raise ValueError(f"GGUF metadata has no {key}")
        return cls(metadata["tokenizer.ggml.tokens"], metadata["tokenizer.ggml.merges"],
                   pre=metadata.get("tokenizer.ggml.pre", "default"),
                   token_types=metadata.get("tokenizer.ggml.token_type"),
                   bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
                   eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
                   add_bos=metadata.get("tokenizer.ggml.add_bos_token", False),
                   chat_template=metadata.get("tokenizer.chat_template"))

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = True) -> str:
        """The prompt text of a chat: the file's ``tokenizer.chat_template`` (Jinja, rendered in a sandbox as
        Hugging Face renders it) over ``messages`` ``[{"role": "user", "content": "..."}, ...]``, ending with
        the assistant's turn opened when ``add_generation_prompt``. ValueError when the file has no
        template or a message is not a ``{"role": str, "content": str}``; TypeError for ``messages`` that
        is not a list."""
        if self.chat_template is None:
            raise ValueError("this model's GGUF has no tokenizer.chat_template: give the prompt as plain text")
        if not isinstance(messages, (list, tuple)):
            raise TypeError(f"messages must be a list of {{'role', 'content'}} dicts, got {type(messages).__name__}")
        for m in messages:
            if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
                raise ValueError(f"every message must be {{'role': str, 'content': str}}, got {m!r}")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        name = lambda i: self.tokens[i] if i is not None and 0 <= i < len(self.tokens) else ""   # noqa: E731
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=bool(add_generation_prompt),
            bos_token=name(self.bos_id), eos_token=name(self.eos_id))

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (control tokens written in the text, like ``<|im_start|>``, stay whole;
        a BOS id is prepended only when the file's ``add_bos_token`` says so).

        Raises TypeError if ``text`` is not a str, ValueError if it is empty.
        """
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text is empty: there is nothing to tokenize")
        ids = self._tk.encode(text, add_special_tokens=False).ids
        return [self.bos_id, *ids] if self.add_bos and self.bos_id is not None else ids

    def decode(self, ids) -> str:
        """The text of token ids ``ids`` (control tokens included as written). ValueError naming ``ids``
        when one is outside ``[0, vocab_size)``."""
        return self._tk.decode(_check_ids(ids, self.vocab_size), skip_special_tokens=False)


def _check_ids(ids, vocab_size: int) -> list[int]:
    """Token ids as a list of int: TypeError naming ``ids`` for non-integers (a float is not truncated to
    a token), ValueError for ids outside ``[0, vocab_size)``."""
    ids = list(np.asarray(ids).reshape(-1)) if isinstance(ids, np.ndarray) else list(ids)
    not_int = [i for i in ids if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer))]
    if not_int:
        raise TypeError(f"ids must be integer token ids, got {not_int[:5]}")
    ids = [int(i) for i in ids]
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ValueError(f"ids out of range [0, {vocab_size}): {bad[:5]}")
    return ids


def _check_texts(texts) -> list[str]:
    """``texts`` as a non-empty list of non-empty str (one str counts as a list of one)."""
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a str or a list of str, got {type(texts).__name__}")
    if not texts:
        raise ValueError("texts is empty: give at least one sentence")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        if not t:
            raise ValueError(f"texts[{i}] is an empty string: there is nothing to embed")
    return list(texts)


class BertTokenizer:
    """WordPiece tokenizer of a BERT checkpoint, read from its ``tokenizer.json``.

    ``encode(text) -> list[int]`` gives ``[CLS] ... [SEP]`` ids truncated to ``max_length``;
    ``batch(texts) -> ids, mask`` pads a list of sentences to the longest one.
    """

    def __init__(self, path, max_length: int = 256):
        from tokenizers import Tokenizer

        try:
            tk = Tokenizer.from_file(str(path))
        except Exception as e:                           # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from e
        tk.no_padding()                                  # tokenizer.json pads to 128: pad per batch instead
        tk.enable_truncation(max_length=max_length)      # counts [CLS] and [SEP]
        self._tk = tk
        self.max_length = max_length
        self.vocab_size = tk.get_vocab_size()
        self.pad_id = tk.token_to_id("[PAD]")
        if self.pad_id is None:
            raise ValueError(f"{path}: no [PAD] token: not a BERT WordPiece tokenizer")

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``: ``[CLS]`` (101), the WordPiece ids, ``[SEP]`` (102), at most
        ``max_length`` in all. Raises TypeError if ``text`` is not a str, ValueError if it is empty."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        if not text:
            raise ValueError("text is empty: there is nothing to tokenize")
        return self._tk.encode(text).ids

    def decode(self, ids) -> str:
        """The text of ``ids`` with the special tokens dropped (lower-cased, as the tokenizer saw it)."""
        return self._tk.decode(_check_ids(ids, self.vocab_size), skip_special_tokens=True)

    def batch(self, texts):
        """``texts`` (list of N str) -> ``ids [N, T]`` int64 padded with ``[PAD]``, ``mask [N, T]`` bool
        (True on real tokens), T the longest encoded length."""
        texts = _check_texts(texts)
        enc = [self._tk.encode(t).ids for t in texts]
        T = max(len(e) for e in enc)
        ids = np.full((len(enc), T), self.pad_id, dtype=np.int64)                  # [N, T]
        mask = np.zeros((len(enc), T), dtype=bool)                                 # [N, T]
        for i, e in enumerate(enc):
            ids[i, :len(e)] = e
            mask[i, :len(e)] = True
        return ids, mask
