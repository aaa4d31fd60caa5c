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
    def num_visual_tokens(self) -> int:
        """Visual tokens that replace one image placeholder."""
        return self.connector.num_output_tokens(self.encoder.num_features)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels [B, 3, H, W] → visual tokens [B, M, d_llm] in the LLM's dtype."""
        features = self.encoder(images)
        visual = self.connector(features.to(self._connector_dtype()))
        return visual.to(self.llm.get_input_embeddings().weight.dtype)

    def _connector_dtype(self) -> torch.dtype:
        return next(self.connector.parameters()).dtype

    def splice(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None,
               labels: torch.Tensor | None = None, padding_side: str = "right") -> Spliced:
        """Replace each sample's image placeholder by its visual tokens; re-pad, rebuild masks and positions.

        Every sample's visual tokens take part in the graph, also for samples without a placeholder (as a
        zero-length slice): every rank then uses the connector in every step, which DDP and FSDP require.
        A sequence longer than `max_length` is cut at its end; a cut through the visual tokens is an error.
        """
        embed = self.llm.get_input_embeddings()
        text_embeds = embed(input_ids.clamp(min=0))
        visual = self.encode_images(images) if images is not None else None
        pieces, piece_labels = [], []
        for b in range(input_ids.shape[0]):
            keep = attention_mask[b].bool()
            ids, emb = input_ids[b][keep], text_embeds[b][keep]
            lab = labels[b][keep] if labels is not None else None
            where = (ids == IMAGE_TOKEN_INDEX).nonzero().flatten().tolist()
            if len(where) > 1:
                raise ValueError(f"sample {b} has {len(where)} image placeholders; lmm supports one image per sample")
            if where and visual is None:
                raise ValueError(f"sample {b} has an image placeholder but the batch carries no images")
            if where:
                p = where[0]
                emb = torch.cat([emb[:p], visual[b], emb[p + 1:]])
                if lab is not None:
                    vis_lab = lab.new_full((visual.shape[1],), IGNORE_INDEX)
                    lab = torch.cat([lab[:p], vis_lab, lab[p + 1:]])
                end_of_visual = p + visual.shape[1]
            else:
                if visual is not None:
                    emb = torch.cat([emb, visual[b][:0]])
                end_of_visual = 0
            if emb.shape[0] > self.max_length:
                if end_of_visual > self.max_length:
                    raise ValueError(f"sample {b}: the visual tokens end at position {end_of_visual}, beyond "
                                     f"max_length={self.max_length}; truncation would cut through them")
                emb = emb[: self.max_length]
                lab = lab[: self.max_length] if lab is not None else None
            pieces.append(emb)
            piece_labels.append(lab)
        return self._pad(pieces, piece_labels if labels is not None else None, padding_side)

    @staticmethod
    def _pad(pieces: list[torch.Tensor], piece_labels: list[torch.Tensor] | None, side: str) -> Spliced:
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
            positions[b, span] = torch.arange(n, device=ref.device)
            if labels is not None:
                labels[b, span] = piece_labels[b]
        return Spliced(embeds, mask, positions, labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, images: torch.Tensor | None = None,
                labels: torch.Tensor | None = None) -> tuple[torch.Tensor, Spliced]:
        """Logits over the spliced sequence, and the spliced batch (its labels align with the logits)."""
        s = self.splice(input_ids, attention_mask, images, labels)
        out = self.llm(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, position_ids=s.position_ids,
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
                 **generate_kwargs) -> torch.Tensor:
        """Batched generation with KV cache (greedy or sampling): the prompt is spliced and left-padded.

        Returns only the new tokens, [B, T_new], padded with the tokenizer's pad id after each sample's EOS.
        """
        s = self.splice(input_ids, attention_mask, images, padding_side="left")
        generate_kwargs.setdefault("use_cache", True)
        return self.llm.generate(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, **generate_kwargs)
