"""The tiny world's zoo: small backbones of the real architectures (CLIP and SigLIP vision towers, Llama LMs) and a
Llama-like tokenizer, randomly initialised and written with `save_pretrained`.

They are read back by the same `from_pretrained` calls that load the paper's checkpoints, so the tiny preset runs
the paper-scale loading path (conf/world/tiny.yaml says where each one is; lmm.world.build builds them).
"""

from __future__ import annotations

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

from lmm.model.preprocess import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD


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
    SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=list(SIGLIP_MEAN),
                            image_std=list(SIGLIP_STD)).save_pretrained(out_dir)


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
