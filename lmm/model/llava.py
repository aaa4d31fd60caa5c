"""LLaVA composition: vision encoder → connector → LLM, with the visual tokens spliced in at the image placeholder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from lmm.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from lmm.model.connector import Connector
from lmm.model.encoder import VisionEncoder
from lmm.model.preprocess import ImageTransform
from lmm.model.tiled import TiledConnector
from lmm.model.tiles import TiledTransform

Visual = torch.Tensor | list[torch.Tensor]  # [B, M, d], or one [M_i, d] per image when the count varies (tiling)


@dataclass
class Spliced:
    """A batch after splicing: what the LLM consumes."""

    inputs_embeds: torch.Tensor  # [B, L, d]
    attention_mask: torch.Tensor  # [B, L]
    position_ids: torch.Tensor  # [B, L], restarting at 0 in every sample
    labels: torch.Tensor | None  # [B, L], IGNORE_INDEX on visual, prompt and padding positions


class LlavaModel(nn.Module):
    """Plain PyTorch LLaVA: each part is a Hugging Face model or a small nn.Module, swappable by config.

    `connector` may be a module or a factory `(in_dim=, out_dim=) -> Connector` (a Hydra partial), so that configs
    never repeat the encoder's and LLM's widths.
    """

    def __init__(self, encoder: VisionEncoder, connector: Connector | Callable[..., Connector], llm: PreTrainedModel,
                 max_length: int = 2048) -> None:
        super().__init__()
        self.encoder = encoder
        if not isinstance(connector, nn.Module):
            connector = connector(in_dim=encoder.hidden_size, out_dim=llm.get_input_embeddings().embedding_dim)
        self.connector = connector
        self.llm = llm
        self.max_length = max_length

    @property
    def tiled(self) -> bool:
        """Whether images arrive as tiles (input=hd or anyres, spec §6): then the visual tokens vary per image."""
        return isinstance(self.connector, TiledConnector)

    @property
    def num_visual_tokens(self) -> int:
        """Visual tokens that replace one image placeholder (tiled: those of an image of the tile's size)."""
        return self.connector.num_output_tokens(self.encoder.num_features)

    def image_transform(self, aspect: str | None = None, source: str | None = None) -> ImageTransform | TiledTransform:
        """The pixels this model takes: the encoder's preprocessing (VisionEncoder.image_transform), as tiles when
        the model is tiled."""
        base = self.encoder.image_transform(aspect, source=source)
        if not self.tiled:
            return base
        return TiledTransform(base, self.connector.spec, self.encoder.image_size // self.encoder.config.patch_size)

    def visual_tokens(self, image_size: tuple[int, int]) -> int:
        """Visual tokens of an image of this (height, width): what its placeholder stands for."""
        if not self.tiled:
            return self.num_visual_tokens
        return self.connector.visual_tokens(image_size, self.encoder.image_size // self.encoder.config.patch_size)

    def encode_images(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> Visual:
        """Pixels [B, 3, H, W] → visual tokens [B, M, d_llm] in the LLM's dtype.

        Tiled: `images` holds every image's tiles one after the other ([sum of tiles, 3, S, S]) and `image_sizes`
        each image's original (height, width), from which its grid follows; returns one [M_i, d_llm] per image.
        """
        features = self.encoder(images)
        visual = self.connector(features.to(self._connector_dtype()))
        visual = visual.to(self.llm.get_input_embeddings().weight.dtype)
        if not self.tiled:
            return visual
        if image_sizes is None:
            raise ValueError("a tiled model needs image_sizes, the (height, width) of every image")
        sizes = [(int(h), int(w)) for h, w in image_sizes.tolist()]
        counts = [self.connector.spec.num_tiles(s) for s in sizes]
        if sum(counts) != visual.shape[0]:
            raise ValueError(f"images of sizes {sizes} make {sum(counts)} tiles, but the batch holds {visual.shape[0]}")
        return [self.connector.pack(t, s) for t, s in zip(visual.split(counts), sizes, strict=True)]

    def _connector_dtype(self) -> torch.dtype:
        return next(self.connector.parameters()).dtype

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None,
               labels: torch.Tensor | None = None, padding_side: str = "right",
               position_ids: torch.Tensor | None = None, image_sizes: torch.Tensor | None = None) -> Spliced:
        """Replace each image placeholder by its visual tokens; re-pad, rebuild masks and positions.

        Unpacked (`position_ids` None): row b is one sample and takes image b; every image's visual tokens take part
        in the graph, also for rows without a placeholder (as a zero-length slice), since DDP and FSDP need the
        connector in every step of every rank. Packed (`position_ids` given, restarting at 0 where a sample
        starts, see lmm/data/packing.py): a row holds several samples, the placeholders take the images in
        row-major order, and positions restart at every sample and run on through its visual tokens.
        A sequence longer than `max_length` is cut at its end; a cut through visual tokens is an error.
        Tiled images (`image_sizes` given) splice the same way, each with its own number of visual tokens.
        """
        embed = self.llm.get_input_embeddings()
        text_embeds = embed(input_ids.clamp(min=0))
        visual = self.encode_images(images, image_sizes) if images is not None else None
        packed = position_ids is not None
        pieces, piece_labels, piece_positions = [], [], []
        next_image = 0
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids, emb = input_ids[b][keep], text_embeds[b][keep]
            lab = labels[b][keep] if labels is not None else None
            starts = (position_ids[b][keep] == 0).nonzero().flatten().tolist() if packed else [0]
            bounds = [*starts, len(ids)] if starts and starts[0] == 0 else [0, *starts, len(ids)]
            row_emb, row_lab, row_pos, end_of_visual = [], [], [], 0
            for start, end in zip(bounds[:-1], bounds[1:], strict=True):  # one sample: tokens [start, end)
                where = (ids[start:end] == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
                if len(where) > 1:
                    raise ValueError(f"row {b}: a sample has {len(where)} image placeholders; lmm supports one image "
                                     "per sample")
                seg_emb, seg_lab = emb[start:end], lab[start:end] if lab is not None else None
                if where:
                    k = next_image if packed else b
                    if visual is None or k >= len(visual):
                        raise ValueError(f"row {b} has an image placeholder but the batch carries no image for it "
                                         f"({0 if visual is None else len(visual)} images)")
                    next_image += 1
                    p = where[0]
                    seg_emb = torch.cat([seg_emb[:p], visual[k], seg_emb[p + 1:]])
                    if seg_lab is not None:
                        seg_lab = torch.cat([seg_lab[:p], seg_lab.new_full((len(visual[k]),), IGNORE_INDEX),
                                             seg_lab[p + 1:]])
                    end_of_visual = sum(len(e) for e in row_emb) + p + len(visual[k])
                row_emb.append(seg_emb)
                row_lab.append(seg_lab)
                row_pos.append(torch.arange(len(seg_emb), device=emb.device))
            emb, pos = torch.cat(row_emb), torch.cat(row_pos)
            lab = torch.cat(row_lab) if lab is not None else None
            if visual is not None and not packed:
                emb = torch.cat([emb, visual[b][:0]])
            if emb.shape[0] > self.max_length:
                if end_of_visual > self.max_length:
                    raise ValueError(f"row {b}: the visual tokens end at position {end_of_visual}, beyond "
                                     f"max_length={self.max_length}; truncation would cut through them")
                emb, pos = emb[: self.max_length], pos[: self.max_length]
                lab = lab[: self.max_length] if lab is not None else None
            pieces.append(emb)
            piece_labels.append(lab)
            piece_positions.append(pos)
        if packed and visual is not None:
            if next_image != len(visual) and not (next_image == 0 and len(visual) == 1):
                raise ValueError(f"the packed batch has {next_image} image placeholders but {len(visual)} images")
            if next_image == 0:  # a text-only packed batch: keep the connector in the graph, with no effect on values
                pieces[0] = pieces[0] + 0 * visual[0].sum()
        return self._pad(pieces, piece_labels if labels is not None else None, piece_positions, padding_side)

    @staticmethod
    def _pad(pieces: list[torch.Tensor], piece_labels: list[torch.Tensor] | None, piece_positions: list[torch.Tensor],
             side: str) -> Spliced:
        batch, longest, dim = len(pieces), max(p.shape[0] for p in pieces), pieces[0].shape[1]
        ref = pieces[0]
        embeds = ref.new_zeros(batch, longest, dim)
        mask = torch.zeros(batch, longest, dtype=torch.long, device=ref.device)
        positions = torch.zeros(batch, longest, dtype=torch.long, device=ref.device)
        labels = torch.full((batch, longest), IGNORE_INDEX, dtype=torch.long, device=ref.device) \
            if piece_labels is not None else None
        for b, piece in enumerate(pieces):
            n = piece.shape[0]
            span = slice(0, n) if side == "right" else slice(longest - n, longest)
            embeds[b, span] = piece
            mask[b, span] = 1
            positions[b, span] = piece_positions[b]
            if side == "right":  # padding as a sequence of its own: a packed row needs no 2-D mask then
                positions[b, n:] = torch.arange(longest - n, device=ref.device)
            if labels is not None:
                labels[b, span] = piece_labels[b]
        return Spliced(embeds, mask, positions, labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                image_sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, Spliced]:
        """Logits over the spliced sequence, and the spliced batch (its labels align with the logits).

        A packed batch (`position_ids` given) goes to the LLM without a 2-D mask and without cache: transformers
        then builds the block-diagonal causal mask from the positions, so no sample attends to another.
        """
        s = self.splice(input_ids, attention_mask, images, labels, position_ids=position_ids, image_sizes=image_sizes)
        mask = None if position_ids is not None else s.attention_mask
        out = self.llm(inputs_embeds=s.inputs_embeds, attention_mask=mask, position_ids=s.position_ids,
                       use_cache=False)
        return out.logits, s

    @staticmethod
    def token_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of next-token cross-entropies over supervised positions, and how many there were."""
        shifted_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
        targets = labels[:, 1:].reshape(-1)
        loss_sum = F.cross_entropy(shifted_logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")
        return loss_sum, (targets != IGNORE_INDEX).sum()

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None = None,
                 image_sizes: torch.Tensor | None = None, **generate_kwargs) -> torch.Tensor:
        """Batched generation with KV cache (greedy or sampling): the prompt is spliced and left-padded.

        Returns only the new tokens, [B, T_new], padded with the tokenizer's pad id after each sample's EOS.
        """
        s = self.splice(input_ids, attention_mask, images, padding_side="left", image_sizes=image_sizes)
        generate_kwargs.setdefault("use_cache", True)
        return self.llm.generate(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, **generate_kwargs)
