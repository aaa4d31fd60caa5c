"""The language model: any Hugging Face causal LM and its tokenizer, by hub id or local folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase


def load_llm(pretrained: str, dtype: str | None = None, attn_implementation: str | None = None) -> PreTrainedModel:
    """Load a causal LM through `from_pretrained`; `dtype` is a torch dtype name such as "bfloat16"."""
    kwargs = {}
    if dtype is not None:
        kwargs["dtype"] = getattr(torch, dtype)
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(pretrained, **kwargs)
    model.config.use_cache = False  # training default; generation turns the cache on explicitly
    return model


def load_tokenizer(pretrained: str, model_max_length: int = 2048, use_fast: bool | None = None,
                   legacy: bool | None = None) -> PreTrainedTokenizerBase:
    """Load the LLM's tokenizer the way LLaVA-1.5 trains with it: right padding, pad = unk when there is no pad."""
    kwargs = {"model_max_length": model_max_length, "padding_side": "right"}
    if use_fast is not None:
        kwargs["use_fast"] = use_fast
    if legacy is not None:
        kwargs["legacy"] = legacy
    tokenizer = AutoTokenizer.from_pretrained(pretrained, **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer


def save_tokenizer(tokenizer: PreTrainedTokenizerBase, folder: str | os.PathLike) -> Path:
    """`save_pretrained`, plus the tokenizer's `legacy` flag in tokenizer_config.json.

    Transformers 5 does not write `legacy` (Llama's SentencePiece flag), and a Llama tokenizer read back without it
    is non-legacy: "</s>USER" then tokenizes differently, which moves LLaVA's chunk-by-chunk prompt tokens around
    <image> and the answer masks. Writing it keeps a saved model's tokenizer the tokenizer it trained with.
    """
    folder = Path(folder)
    tokenizer.save_pretrained(str(folder))
    config_file, flags = folder / "tokenizer_config.json", persisted_flags(tokenizer)
    if flags and config_file.is_file():
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config_file.write_text(json.dumps(config | flags, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return folder


def persisted_flags(tokenizer: PreTrainedTokenizerBase) -> dict[str, bool]:
    """Tokenizer settings that change token ids but that transformers 5 leaves out of tokenizer_config.json
    (Llama's `legacy`), to be written there by whoever saves the tokenizer."""
    legacy = getattr(tokenizer, "legacy", None)
    return {} if legacy is None else {"legacy": bool(legacy)}
