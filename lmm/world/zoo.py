"""The tiny world's zoo: a Llama-like tokenizer and small backbones of the real architectures (a CLIP image-text
model at two resolutions, two Llama LMs), PRETRAINED on this CPU on the world's own images and text, written with
`save_pretrained` and read back by the same `from_pretrained` calls that load the paper's checkpoints.

    build_tokenizer     a SentencePiece-like BPE that tokenises as Llama-2's does (below)
    pretrain_clip       a full CLIPModel (vision + text towers), contrastive; the higher resolution is continued
                        from the lower one (lmm.world.zoo_clip)
    pretrain_llm        a LlamaForCausalLM, next-token loss on the world's text (lmm.world.pretrain)
    build_siglip_tower  a SigLIP vision tower, randomly initialised (the SigLIP rung only needs its architecture)

Every function takes its data as plain arguments (lmm.world.build renders the images and writes the text), every size
and step count is a parameter, and a build is deterministic for its seed: same arguments, same bytes.
"""

from __future__ import annotations

import string
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast, SiglipImageProcessorPil, SiglipVisionConfig, SiglipVisionModel

from lmm.model.preprocess import SIGLIP_MEAN, SIGLIP_STD
from lmm.world.pretrain import llama_config, pretrain_llm, quiet_hf, seeded
from lmm.world.zoo_clip import clip_image_processor, clip_text_tokenizer, pretrain_clip

__all__ = ["build_tokenizer", "pretrain_clip", "pretrain_llm", "build_siglip_tower", "clip_image_processor",
           "clip_text_tokenizer", "llama_config"]

SPECIALS = ["<unk>", "<s>", "</s>"]  # ids 0, 1, 2 as in Llama's vocabulary
PIECE_SEP = r"[\n.,?!:;]"  # characters that are always a piece of their own (never merged with a neighbour)


def build_tokenizer(texts: list[str], out_dir: Path, vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A SentencePiece-like BPE trained on `texts` that tokenises as Llama-2's tokenizer does, saved to `out_dir`.

    Like Llama-2 (SentencePiece, add_dummy_prefix, legacy): every section of text (the whole string, and each part
    after a special token such as "</s>" or an added "<image>") gets "▁" prepended, a space becomes "▁" on the word
    after it, and a newline is a piece of its own, never merged with "▁" ("USER: <image>\\nWhat" -> "▁", <image>, "▁",
    "\\n", "What"). So a prompt tokenised whole, with <image> added as a special token, gives the same ids as LLaVA's
    chunk-by-chunk tokenisation around <image> (lmm.data.templates.tokenize_prompt). Punctuation .,?!:; is a piece of
    its own too. <unk>=0, <s>=1, </s>=2, BOS prepended, pad = <unk>, padding right. Characters outside `texts` and
    printable ASCII are <unk> (no byte fallback).
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True),
        pre_tokenizers.Split(Regex(PIECE_SEP), behavior="isolated")])
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    printable = set(string.ascii_letters + string.digits + string.punctuation + "\n▁")
    alphabet = sorted((set("".join(texts)) | printable) - {" ", "\t", "\r", "\x0b", "\x0c"})
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<unk>", model_max_length=512, padding_side="right")
    fast.save_pretrained(out_dir)
    return fast


def build_siglip_tower(out_dir: Path, image_size: int, patch_size: int = 8, hidden_size: int = 64,
                       num_layers: int = 3, seed: int = 0) -> None:
    """A RANDOMLY INITIALISED SigLIP vision tower (no CLS token, mean/std 0.5) plus its image-processor config.

    Not pretrained: it stands in for SigLIP's architecture and preprocessing only (conf/model/encoder/siglip.yaml).
    """
    config = SiglipVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                                num_hidden_layers=num_layers, num_attention_heads=4, image_size=image_size,
                                patch_size=patch_size)
    with seeded(seed), quiet_hf():
        SiglipVisionModel(config).save_pretrained(out_dir)
        SiglipImageProcessorPil(size={"height": image_size, "width": image_size}, image_mean=list(SIGLIP_MEAN),
                                image_std=list(SIGLIP_STD)).save_pretrained(out_dir)
