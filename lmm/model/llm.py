"""The language model: any Hugging Face causal LM and its tokenizer, by hub id or local folder."""

from __future__ import annotations

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
