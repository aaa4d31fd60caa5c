"""Objectives on the world CLIP's vision patches, added to its contrastive loss during pretraining (lmm.world.zoo_clip).

Why: a batch of random scenes is told apart by colour alone, so CLIP's InfoNCE stops asking for kinds once colours
are learned, and LLaVA's connector is handed the patches, not the pooled embedding. Each objective here is a small
head on one hidden layer of the vision tower (the penultimate, which LLaVA reads), trained beside the CLIP and dropped
after it: the checkpoint stays a plain CLIP.

    CaptionWords   which of the caption's words the image holds (max over patches; eighth measurement)
    PatchLabels    the kind and the colour of the object under each patch's centre, or background (twelfth)

A head's `loss(hidden_states, targets)` takes the vision tower's hidden states (a tuple, embeddings first, as
transformers returns them) and the targets of the batch's images.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import CLIPModel

from lmm.world.scenes import COLORS, KINDS, Scene, patch_objects


class CaptionWords(torch.nn.Module):
    """Which of the caption's words are in the image, read off each patch of `layer` (a linear score per vocabulary
    token, max over patches)."""

    def __init__(self, hidden_size: int, vocab_size: int, layer: int = -2) -> None:
        super().__init__()
        self.layer = layer
        self.norm = torch.nn.LayerNorm(hidden_size)
        self.score = torch.nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.score(self.norm(hidden_states[self.layer][:, 1:])).amax(dim=1)

    def loss(self, hidden_states: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy summed over the vocabulary (a mean would shrink each word's gradient by the
        vocabulary's size), averaged over the batch."""
        per_word = torch.nn.functional.binary_cross_entropy_with_logits(self(hidden_states), targets,
                                                                        reduction="none")
        return per_word.sum(dim=1).mean()


def caption_word_targets(ids: torch.Tensor, lengths: torch.Tensor, vocab_size: int,
                         special: Sequence[int]) -> torch.Tensor:
    """[N, vocab] multi-hot of the token ids each caption holds, its special tokens (BOS, <|endoftext|>) left out."""
    targets = torch.zeros(len(ids), vocab_size)
    for i, n in enumerate(lengths.tolist()):
        targets[i, ids[i, :n]] = 1.0
    targets[:, list(special)] = 0.0
    return targets


class PatchLabels(torch.nn.Module):
    """The kind and the colour under each patch of `layer`, by two linear heads (background is one more class of
    each). Why not a probe's MLP: a linear head asks the tower itself to make the thing legible in each patch, which
    is what LLaVA's stage 1 needs to map patches onto the LM's words (experiments/world.md, twelfth measurement)."""

    def __init__(self, hidden_size: int, layer: int = -2) -> None:
        super().__init__()
        self.layer = layer
        self.kind = torch.nn.Linear(hidden_size, len(KINDS) + 1)
        self.colour = torch.nn.Linear(hidden_size, len(COLORS) + 1)

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        patches = hidden_states[self.layer][:, 1:]
        return self.kind(patches), self.colour(patches)

    def loss(self, hidden_states: Sequence[torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the kind plus that of the colour, each averaged over the batch's patches."""
        kind, colour = self(hidden_states)
        ce = torch.nn.functional.cross_entropy
        return ce(kind.flatten(0, 1), targets[..., 0].flatten()) + ce(colour.flatten(0, 1), targets[..., 1].flatten())


def patch_label_targets(scenes: Sequence[Scene], grid: int, aspect: str) -> torch.Tensor:
    """[N, grid * grid, 2] long: per patch the index of the kind under its centre and of its colour in KINDS and
    COLORS, len(KINDS) / len(COLORS) for background; the square the tower sees is the picture padded or cropped
    (`aspect`, as the CLIP's pixels are)."""
    background = (len(KINDS), len(COLORS))
    colours = list(COLORS)
    out = torch.empty(len(scenes), grid * grid, 2, dtype=torch.long)
    for i, scene in enumerate(scenes):
        out[i] = torch.tensor([background if o is None else (KINDS.index(o.kind), colours.index(o.colour))
                               for o in patch_objects(scene, grid, aspect)])
    return out


def loss_with_heads(model: CLIPModel, pixel_values: torch.Tensor, texts: tuple[torch.Tensor, torch.Tensor],
                    heads: Sequence[tuple[float, torch.nn.Module, torch.Tensor]]) -> torch.Tensor:
    """CLIP's own loss plus, for each (weight, head, the batch's targets), weight x head.loss on the vision tower's
    hidden states (one forward pass for all)."""
    out = model(input_ids=texts[0], attention_mask=texts[1], pixel_values=pixel_values, return_loss=True,
                output_hidden_states=bool(heads))
    hidden = out.vision_model_output.hidden_states
    loss = out.loss
    for weight, head, targets in heads:
        loss = loss + weight * head.loss(hidden, targets)
    return loss
