"""The tiny world's CLIP: a full CLIPModel (vision and text towers) pretrained contrastively on the world's (image,
caption) pairs, as openai/clip-vit-large-patch14 is a full image-text checkpoint whose vision tower LLaVA loads.

The lower resolution (the "res224" analog) is trained from scratch; the higher one (the "res336" analog) is continued
from it with its vision position embeddings interpolated to the finer grid, for fewer steps, as CLIP-L/14-336 was
continued from CLIP-L/14. Each folder holds the model, a CLIP image-processor config (resize the shortest edge,
centre-crop, CLIP mean/std) and the tokenizer of its text tower.

The text tower reads the world's tokenizer plus one added token, "<|endoftext|>", appended to every caption and
pooled by CLIPTextModel (real CLIP pools its <|endoftext|> too). Why not the world's "</s>": transformers' CLIP
treats a config `eos_token_id` of 2 as a pre-2023 checkpoint and pools the HIGHEST id of each sequence instead; the
added token is both the configured eos id and the highest id, so either rule pools it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, processors
from transformers import (
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    CLIPTextConfig,
    CLIPVisionConfig,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from lmm.log import log
from lmm.model.preprocess import CLIP_MEAN, CLIP_STD, expand_to_square
from lmm.world.clip_objectives import (
    CaptionWords,
    PatchLabels,
    caption_word_targets,
    loss_with_heads,
    patch_label_targets,
)
from lmm.world.pretrain import Batches, Clock, final_loss, quiet_hf, seeded, train_steps
from lmm.world.scenes import Scene

END_OF_TEXT = "<|endoftext|>"
MAX_LOGIT_SCALE = float(np.log(100.0))  # CLIP clamps its learned temperature at 100


def clip_image_processor(image_size: int) -> CLIPImageProcessorPil:
    """CLIP's preprocessing at `image_size`: bicubic resize of the shortest edge, centre crop, CLIP mean/std."""
    return CLIPImageProcessorPil(size={"shortest_edge": image_size},
                                 crop_size={"height": image_size, "width": image_size},
                                 image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))


def clip_text_tokenizer(tokenizer: PreTrainedTokenizerBase) -> PreTrainedTokenizerFast:
    """The world's tokenizer for CLIP's text tower: "<|endoftext|>" added (the highest id) and appended to every text
    after the BOS-prefixed ids, and its eos; pad stays the world's (<unk>), padding right."""
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    fast = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=tokenizer.bos_token,
                                   unk_token=tokenizer.unk_token, pad_token=tokenizer.pad_token, padding_side="right",
                                   model_max_length=64)
    fast.add_special_tokens({"eos_token": END_OF_TEXT})
    eot, bos = fast.convert_tokens_to_ids(END_OF_TEXT), tokenizer.bos_token_id
    fast.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{tokenizer.bos_token} $A {END_OF_TEXT}",
        special_tokens=[(tokenizer.bos_token, bos), (END_OF_TEXT, eot)])
    return fast


def crop_pixels(images: Sequence[Image.Image], image_size: int, aspect: str = "crop") -> torch.Tensor:
    """The uint8 pixels [N, 3, S, S] CLIP's processor sees: (`aspect` "pad": LLaVA's mean-coloured square first)
    bicubic resize of the shortest edge to S, centre crop; `normalize` finishes the processor's work. The same pixels
    as lmm.model.preprocess.ImageTransform, computed once so that training steps only index a tensor."""
    out = torch.empty(len(images), 3, image_size, image_size, dtype=torch.uint8)
    pad_color = tuple(int(255 * m) for m in CLIP_MEAN)
    for i, image in enumerate(images):
        img = image.convert("RGB")
        if aspect == "pad":
            img = expand_to_square(img, pad_color)
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(image_size * long / short)
        size = (image_size, new_long) if w <= h else (new_long, image_size)
        if size != (w, h):
            img = img.resize(size, resample=Image.Resampling.BICUBIC)
        top, left = (size[1] - image_size) // 2, (size[0] - image_size) // 2
        arr = np.asarray(img)[top:top + image_size, left:left + image_size]
        out[i] = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))
    return out


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, S, S] -> CLIP-normalised float32, rounded exactly as the image processor rounds."""
    x = (pixels.double() * (1 / 255)).float()
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def tokenize_captions(text_tokenizer: PreTrainedTokenizerBase, captions: Sequence[str],
                      max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids [N, max_len] (right-padded; a caption too long is cut and keeps its final <|endoftext|>) and lengths."""
    encoded = text_tokenizer(list(captions))["input_ids"]
    eot, pad = text_tokenizer.eos_token_id, text_tokenizer.pad_token_id
    ids = torch.full((len(encoded), max_len), pad, dtype=torch.long)
    lengths = torch.empty(len(encoded), dtype=torch.long)
    for i, seq in enumerate(encoded):
        seq = seq if len(seq) <= max_len else seq[:max_len - 1] + [eot]
        ids[i, :len(seq)] = torch.tensor(seq)
        lengths[i] = len(seq)
    return ids, lengths


def _text_batch(ids: torch.Tensor, lengths: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    width = int(lengths[idx].max())
    mask = (torch.arange(width)[None] < lengths[idx, None]).long()
    return ids[idx, :width], mask


def interpolate_positions(weight: torch.Tensor, new_grid: int) -> torch.Tensor:
    """CLIP vision position embeddings [1 + g*g, d] -> [1 + new_grid**2, d]: the class position kept, the patch grid
    resized bicubically (as transformers' interpolate_pos_encoding and CLIP-L/14-336 do)."""
    cls_pos, grid_pos = weight[:1], weight[1:]
    grid, dim = int(round(len(grid_pos) ** 0.5)), weight.shape[1]
    grid_pos = grid_pos.reshape(1, grid, grid, dim).permute(0, 3, 1, 2)
    grid_pos = torch.nn.functional.interpolate(grid_pos.float(), size=(new_grid, new_grid), mode="bicubic",
                                               align_corners=False)
    return torch.cat([cls_pos, grid_pos.permute(0, 2, 3, 1).reshape(new_grid * new_grid, dim).to(weight.dtype)])


def clip_config(vocab_size: int, eot_id: int, pad_id: int, bos_id: int, *, image_size: int, patch_size: int,
                hidden_size: int, num_layers: int, text_hidden_size: int, text_layers: int, max_text_len: int,
                projection_dim: int, num_heads: int = 4) -> CLIPConfig:
    """A small CLIPConfig: ViT vision tower, causal text tower pooling `eot_id`, 4x MLPs, quick-GELU as CLIP."""
    vision = CLIPVisionConfig(hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                              num_hidden_layers=num_layers, num_attention_heads=num_heads, image_size=image_size,
                              patch_size=patch_size, projection_dim=projection_dim)
    text = CLIPTextConfig(vocab_size=vocab_size, hidden_size=text_hidden_size, intermediate_size=4 * text_hidden_size,
                          num_hidden_layers=text_layers, num_attention_heads=num_heads,
                          max_position_embeddings=max_text_len, projection_dim=projection_dim,
                          eos_token_id=eot_id, pad_token_id=pad_id, bos_token_id=bos_id)
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=projection_dim)


def _continued(init_from: str | Path, image_size: int) -> CLIPModel:
    """The CLIP at `init_from` at a new input resolution: every weight its own, the position grid interpolated."""
    with quiet_hf():
        low = CLIPModel.from_pretrained(init_from)
    config = CLIPConfig.from_dict(low.config.to_dict())
    config.vision_config.image_size = image_size
    model = CLIPModel(config)
    state = low.state_dict()
    key = "vision_model.embeddings.position_embedding.weight"
    state[key] = interpolate_positions(state[key], image_size // config.vision_config.patch_size)
    model.load_state_dict(state)
    return model


def _loss_with_negatives(model: CLIPModel, pixel_values: torch.Tensor, texts: tuple[torch.Tensor, torch.Tensor],
                         negatives: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, each image ranked against the batch's captions plus their hard negatives."""
    unit = torch.nn.functional.normalize
    image = unit(model.get_image_features(pixel_values=pixel_values).pooler_output, dim=-1)
    text = unit(model.get_text_features(input_ids=texts[0], attention_mask=texts[1]).pooler_output, dim=-1)
    wrong = unit(model.get_text_features(input_ids=negatives[0], attention_mask=negatives[1]).pooler_output, dim=-1)
    scale = model.logit_scale.exp()
    target = torch.arange(len(image))
    image_to_text = scale * image @ torch.cat([text, wrong]).T
    text_to_image = scale * text @ image.T
    return (torch.nn.functional.cross_entropy(image_to_text, target)
            + torch.nn.functional.cross_entropy(text_to_image, target)) / 2


@torch.no_grad()
def _embed(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
           batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    model.eval()
    images, texts = [], []
    for i in range(0, len(pixels), batch_size):
        idx = torch.arange(i, min(i + batch_size, len(pixels)))
        images.append(model.get_image_features(pixel_values=normalize(pixels[idx])).pooler_output)
        input_ids, mask = _text_batch(ids, lengths, idx)
        texts.append(model.get_text_features(input_ids=input_ids, attention_mask=mask).pooler_output)
    images_t, texts_t = torch.cat(images), torch.cat(texts)
    return images_t / images_t.norm(dim=-1, keepdim=True), texts_t / texts_t.norm(dim=-1, keepdim=True)


def retrieval_top1(model: CLIPModel, pixels: torch.Tensor, ids: torch.Tensor, lengths: torch.Tensor,
                   captions: Sequence[str], pool: int) -> float:
    """Image -> caption top-1 accuracy: the held-out set cut into consecutive pools of `pool` pairs (the whole set
    when smaller; a last partial pool joins the one before), each image ranked against its pool's captions. A
    retrieved caption with the same text as the image's own counts as right (scenes can share a caption)."""
    image_emb, text_emb = _embed(model, pixels, ids, lengths)
    n, right = len(captions), 0
    starts = list(range(0, max(n - pool, 0) + 1, pool)) if n >= pool else [0]
    for k, lo in enumerate(starts):
        hi = starts[k + 1] if k + 1 < len(starts) else n
        best = (image_emb[lo:hi] @ text_emb[lo:hi].T).argmax(dim=1)
        right += sum(captions[lo + int(j)] == captions[lo + i] for i, j in enumerate(best))
    return right / max(n, 1)


def pretrain_clip(out_dir: str | Path, images: Sequence[Image.Image], captions: Sequence[str],
                  tokenizer: PreTrainedTokenizerBase, *, image_size: int, patch_size: int = 8,
                  hidden_size: int | None = None, num_layers: int | None = None, text_hidden_size: int | None = None,
                  text_layers: int | None = None, projection_dim: int | None = None, max_text_len: int = 64,
                  steps: int = 400, batch_size: int = 128, lr: float = 2e-3, warmup: int | None = None,
                  weight_decay: float = 0.1, seed: int = 0, init_from: str | Path | None = None,
                  heldout: tuple[Sequence[Image.Image], Sequence[str]] | None = None, pool: int = 100,
                  aspect: str = "crop", negatives: Sequence[Sequence[str]] | None = None, caption_words: float = 0.0,
                  patch_labels: float = 0.0, scenes: Sequence[Scene] | None = None, bf16: bool = False,
                  progress: bool = True, name: str | None = None) -> dict:
    """Pretrain a full CLIPModel contrastively on (image, caption) pairs and save it to `out_dir` as a full CLIP
    checkpoint with its image-processor config and its text tower's tokenizer (clip_text_tokenizer).

    CLIP's symmetric InfoNCE over each batch with the learned logit scale (clamped at 100). Images are preprocessed
    once as the saved processor does (shortest edge to `image_size`, centre crop; `aspect="pad"` squares them first),
    then each step indexes the cached pixels; each epoch visits the pairs in a new seeded order. With `negatives`
    (for each pair, captions that are wrong for its image: lmm.world.questions.contrast_caption) each step adds one
    of each batch image's negatives, drawn at random, to the captions its image is ranked against (image -> text
    only, as NegCLIP): a batch of random scenes is told apart by colours alone, these are not. `caption_words` > 0
    adds that weight x a caption-word loss (CaptionWords: which of its caption's words each image holds, read off
    its patches); `patch_labels` > 0 adds that weight x a per-patch loss (PatchLabels: the kind and colour under each
    patch centre, from `scenes`, the pairs' ground truth); the heads are dropped after training. Negatives are a
    recipe of their own: not with either head.

    From scratch (`init_from` None): vision ViT of `hidden_size` (64) x `num_layers` (3), patches of `patch_size`;
    text tower of `text_hidden_size` / `text_layers` (the vision's by default), `max_text_len` positions. With
    `init_from` (a folder written by this function) the architecture and every weight are that model's, at the new
    `image_size`, with the vision position embeddings interpolated to the new grid (the size arguments must be None).

    Returns {"steps", "seconds", "cpu_seconds", "first_loss", "final_loss" (mean of the last 20 steps),
    "retrieval_top1" (image -> caption among `pool` held-out captions, see retrieval_top1; None without `heldout`),
    "pool", "image_size", "num_patches", "params"}.
    """
    out_dir = Path(out_dir)
    name = name or out_dir.name
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    sizes = (hidden_size, num_layers, text_hidden_size, text_layers, projection_dim)
    if init_from is not None and any(v is not None for v in sizes):
        raise ValueError("a continued CLIP keeps its architecture: leave the size arguments None")
    clock = Clock()
    text_tokenizer = clip_text_tokenizer(tokenizer)
    pixels = crop_pixels(images, image_size, aspect)
    ids, lengths = tokenize_captions(text_tokenizer, captions, max_text_len)
    if negatives is not None and len(negatives) != len(captions):
        raise ValueError(f"{len(negatives)} lists of negatives for {len(captions)} captions")
    k = min((len(n) for n in negatives), default=0) if negatives is not None else 0
    if negatives is not None and k == 0:
        raise ValueError("every caption needs at least one negative when `negatives` is given")
    with seeded(seed) as gen:
        if init_from is not None:
            model = _continued(init_from, image_size)
            if model.config.text_config.max_position_embeddings < ids.shape[1]:
                ids, lengths = tokenize_captions(text_tokenizer, captions,
                                                 model.config.text_config.max_position_embeddings)
        else:
            hidden_size, num_layers = hidden_size or 64, num_layers or 3
            model = CLIPModel(clip_config(len(text_tokenizer), text_tokenizer.eos_token_id,
                                          text_tokenizer.pad_token_id, text_tokenizer.bos_token_id,
                                          image_size=image_size, patch_size=patch_size, hidden_size=hidden_size,
                                          num_layers=num_layers, text_hidden_size=text_hidden_size or hidden_size,
                                          text_layers=text_layers or num_layers, max_text_len=max_text_len,
                                          projection_dim=projection_dim or hidden_size))
        neg = [tokenize_captions(text_tokenizer, [n[v] for n in negatives], ids.shape[1]) for v in range(k)]
        batches = Batches(len(pixels), min(batch_size, len(pixels)), gen)
        if (caption_words or patch_labels) and neg:
            raise ValueError("hard negatives and the patch heads (caption_words, patch_labels) are separate recipes: "
                             "give one of them")
        heads: list[tuple[float, torch.nn.Module, torch.Tensor]] = []
        if caption_words:
            heads.append((caption_words, CaptionWords(model.config.vision_config.hidden_size, len(text_tokenizer)),
                          caption_word_targets(ids, lengths, len(text_tokenizer),
                                               (text_tokenizer.bos_token_id, text_tokenizer.eos_token_id))))
        if patch_labels:
            if scenes is None or len(scenes) != len(images):
                raise ValueError(f"patch_labels needs the scene of every image: {len(images)} images, "
                                 f"{'no' if scenes is None else len(scenes)} scenes")
            vision = model.config.vision_config
            heads.append((patch_labels, PatchLabels(vision.hidden_size),
                          patch_label_targets(scenes, image_size // vision.patch_size, aspect)))
        trained = torch.nn.ModuleList([model, *(head for _, head, _ in heads)]) if heads else model

        def loss_of_step(step: int) -> torch.Tensor:
            idx = batches.next()
            input_ids, mask = _text_batch(ids, lengths, idx)
            if heads:
                return loss_with_heads(model, normalize(pixels[idx]), (input_ids, mask),
                                       [(w, head, targets[idx]) for w, head, targets in heads])
            if not neg:
                return model(input_ids=input_ids, pixel_values=normalize(pixels[idx]), attention_mask=mask,
                             return_loss=True).loss
            variant = neg[int(torch.randint(k, (1,), generator=gen))]
            neg_ids, neg_mask = _text_batch(*variant, idx)
            return _loss_with_negatives(model, normalize(pixels[idx]), (input_ids, mask), (neg_ids, neg_mask))

        def clamp_scale() -> None:
            with torch.no_grad():
                model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)

        losses = train_steps(trained, loss_of_step, steps=steps, lr=lr, weight_decay=weight_decay, bf16=bf16,
                             warmup=warmup if warmup is not None else max(1, steps // 10), desc=name,
                             progress=progress, no_decay=("embedding", "logit_scale"), after_step=clamp_scale)
        top1 = None
        if heldout is not None and len(heldout[0]):
            held_ids, held_lengths = tokenize_captions(text_tokenizer, heldout[1], ids.shape[1])
            top1 = retrieval_top1(model, crop_pixels(heldout[0], image_size, aspect), held_ids, held_lengths,
                                  heldout[1], pool)
    with quiet_hf():
        model.save_pretrained(out_dir)
        clip_image_processor(image_size).save_pretrained(out_dir)
        text_tokenizer.save_pretrained(out_dir)
    vision = model.config.vision_config
    result = {"steps": steps, **clock.read(), "first_loss": losses[0] if losses else None,
              "final_loss": final_loss(losses), "retrieval_top1": top1,
              "pool": pool, "image_size": image_size, "num_patches": (image_size // vision.patch_size) ** 2,
              "params": sum(p.numel() for p in model.parameters())}
    top1_text = f", held-out image->caption top-1 {top1:.3f} (pool {pool})" if top1 is not None else ""
    log.info(f"{name}: CLIP at {image_size}px, {steps} steps in {result['seconds']}s, "
             f"loss {result['final_loss'] or float('nan'):.3f}{top1_text}")
    return result
