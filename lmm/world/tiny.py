"""Tiny backbones of the real architectures (CLIP vision tower, Llama LM, Llama-like tokenizer), built on the machine.

They are written with `save_pretrained` and read back by the same `from_pretrained` calls that load the paper's
checkpoints, so the tiny preset exercises the paper-scale loading path. Everything is built once into a cache folder
(atomically, so parallel sweep jobs can race for it safely) and reused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    SiglipImageProcessorPil,
    SiglipVisionConfig,
    SiglipVisionModel,
)
from transformers.utils import logging as hf_logging

from lmm.data.images import CLIP_MEAN, CLIP_STD
from lmm.data.templates import VICUNA_V1_SYSTEM as VICUNA_SYSTEM
from lmm.world import scenes

BUILD_VERSION = 2  # bump when what is built changes, so stale caches are rebuilt


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A SentencePiece-like BPE (Metaspace '▁', <unk>=0 <s>=1 </s>=2, BOS prepended), as Llama's tokenizer behaves."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    # Punctuation and newlines become pieces of their own, as SentencePiece's Llama vocabulary mostly keeps them.
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"[\n.,?!:;]"), behavior="isolated"),
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    alphabet = sorted(set("".join(texts)) | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                                 ".,:;!?'\"()-\n▁"))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", model_max_length=512, padding_side="right")
    fast.save_pretrained(out_dir)
    return fast


def build_vision_tower(out_dir: Path, image_size: int, patch_size: int = 8, hidden_size: int = 64,
                       num_layers: int = 3, seed: int = 0) -> None:
    """A randomly initialised CLIP vision tower plus its image-processor config."""
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size, num_hidden_layers=num_layers,
                              num_attention_heads=4, image_size=image_size, patch_size=patch_size,
                              projection_dim=hidden_size)
    CLIPVisionModel(config).save_pretrained(out_dir)
    CLIPImageProcessorPil(size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size},
                          image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)).save_pretrained(out_dir)


def build_siglip_tower(out_dir: Path, image_size: int, patch_size: int = 8, hidden_size: int = 64,
                       num_layers: int = 3, seed: int = 0) -> None:
    """A randomly initialised SigLIP vision tower (no CLS token, mean/std 0.5) plus its image-processor config."""
    torch.manual_seed(seed)
    config = SiglipVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                                num_hidden_layers=num_layers, num_attention_heads=4, image_size=image_size,
                                patch_size=patch_size)
    SiglipVisionModel(config).save_pretrained(out_dir)
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=[0.5] * 3,
                            image_std=[0.5] * 3).save_pretrained(out_dir)


def build_llm(out_dir: Path, tokenizer: PreTrainedTokenizerFast, hidden_size: int = 128, num_layers: int = 4,
              seed: int = 0) -> None:
    """A randomly initialised Llama with the tokenizer saved beside it."""
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=int(2.75 * hidden_size),
                         num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def _build(root: Path, num_align: int, num_instruct: int, num_eval: int, seed: int) -> None:
    hf_logging.disable_progress_bar()
    texts = scenes.corpus(seed) + [VICUNA_SYSTEM, "USER:", "ASSISTANT:", "\n", scenes.SHORT_ANSWER]
    tokenizer = build_tokenizer(texts, root / "tokenizer")
    build_llm(root / "llama-tiny", tokenizer, seed=seed)  # stands in for Vicuna-7B
    build_llm(root / "llama-tiny-large", tokenizer, hidden_size=192, num_layers=6, seed=seed)  # for Vicuna-13B
    build_vision_tower(root / "clip-tiny-res224", image_size=32, seed=seed)
    build_vision_tower(root / "clip-tiny-res336", image_size=48, seed=seed)
    build_siglip_tower(root / "siglip-tiny-res224", image_size=32, seed=seed)
    build_siglip_tower(root / "siglip-tiny-res336", image_size=48, seed=seed)
    scenes.build_dataset(root / "data", num_align, num_instruct, num_eval, seed)


def ensure_tiny_world(root: str, num_align: int = 4000, num_instruct: int = 4000, num_eval: int = 200,
                      seed: int = 0) -> Path:
    """Build the tiny backbones and data under `root` unless an identical build is already there."""
    root_path = Path(root)
    spec = {"version": BUILD_VERSION, "num_align": num_align, "num_instruct": num_instruct, "num_eval": num_eval,
            "seed": seed}
    stamp = root_path / "BUILT.json"
    if stamp.exists() and json.loads(stamp.read_text()) == spec:
        return root_path
    root_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".building-", dir=root_path.parent))
    try:
        print(f"[lmm] building the tiny world (backbones + data) into {root_path} ...", flush=True)
        _build(tmp, num_align, num_instruct, num_eval, seed)
        (tmp / "BUILT.json").write_text(json.dumps(spec))
        if stamp.exists() and json.loads(stamp.read_text()) == spec:  # another process won the race
            return root_path
        if root_path.exists():
            shutil.rmtree(root_path)
        os.replace(tmp, root_path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root_path
