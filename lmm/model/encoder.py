"""The vision encoder: any Hugging Face vision tower, frozen, returning the features of one hidden layer, and the
image preprocessing its weights expect (lmm.model.preprocess)."""

from __future__ import annotations

import os

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPVisionModel, PreTrainedModel, SiglipVisionModel
from transformers.utils import logging as hf_logging

from lmm.constants import SELECT_FEATURES
from lmm.model.preprocess import ImageTransform, encoder_transform

# Full image-text checkpoints (e.g. openai/clip-vit-large-patch14) hold a text tower too: load only the vision part.
_VISION_CLASSES: dict[str, type[PreTrainedModel]] = {
    "clip": CLIPVisionModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip": SiglipVisionModel,
    "siglip_vision_model": SiglipVisionModel,
}


def load_vision_tower(pretrained: str, dtype: torch.dtype | None = None) -> PreTrainedModel:
    """Load a vision tower by hub id or local folder through `from_pretrained`.

    A full CLIP checkpoint (openai/clip-vit-large-patch14, the tiny world's CLIP) holds a text tower too: its weights
    are expected to go unused, so transformers' report of them is kept quiet; a vision weight missing is an error.
    """
    config = AutoConfig.from_pretrained(pretrained)
    cls = _VISION_CLASSES.get(config.model_type, AutoModel)
    if config.model_type != "clip":
        return cls.from_pretrained(pretrained, dtype=dtype)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        tower, info = cls.from_pretrained(pretrained, dtype=dtype, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    if info["missing_keys"]:
        raise ValueError(f"{pretrained}: the vision tower's weights {sorted(info['missing_keys'])[:5]} are missing")
    return tower


class VisionEncoder(nn.Module):
    """A frozen vision tower that returns patch features of `select_layer` (LLaVA: penultimate layer, CLS dropped).

    `select_feature="patch"` drops the CLS token (LLaVA-1.5), `"cls_patch"` keeps it. The tower always runs without
    gradient: LLaVA never trains it, and keeping it out of autograd saves its activations. `source` is where the
    tower came from (a folder or hub id): its image processor config lives there (see image_transform).
    """

    def __init__(self, tower: PreTrainedModel, select_layer: int = -2, select_feature: str = "patch",
                 source: str | os.PathLike | None = None) -> None:
        super().__init__()
        if select_feature not in SELECT_FEATURES:
            raise ValueError(f"select_feature must be one of {SELECT_FEATURES}, got {select_feature!r}")
        self.tower = tower
        self.select_layer = select_layer
        self.select_feature = select_feature
        self.source = None if source is None else str(source)
        # CLIP prepends a class embedding to the patches; SigLIP has none.
        self.has_cls_token = any(hasattr(m, "class_embedding") for m in tower.modules())
        self.tower.requires_grad_(False)
        self.tower.eval()

    @classmethod
    def from_pretrained(cls, pretrained: str, select_layer: int = -2, select_feature: str = "patch",
                        dtype: str | None = None) -> VisionEncoder:
        torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        return cls(load_vision_tower(pretrained, torch_dtype), select_layer, select_feature, source=pretrained)

    def image_transform(self, aspect: str | None = None, source: str | os.PathLike | None = None) -> ImageTransform:
        """The pixels this tower must see: the processor config of `source` (default: where the tower came from),
        else its family's defaults at its resolution; `aspect` None keeps the config's own pad/crop. The one rule
        (lmm.model.preprocess.encoder_transform) that training, saving, evaluation and export all follow."""
        return encoder_transform(self.tower.config.to_dict(), source if source is not None else self.source, aspect)

    @property
    def config(self):
        return self.tower.config

    @property
    def hidden_size(self) -> int:
        return self.tower.config.hidden_size

    @property
    def image_size(self) -> int:
        return self.tower.config.image_size

    @property
    def num_patches(self) -> int:
        return (self.tower.config.image_size // self.tower.config.patch_size) ** 2

    @property
    def num_features(self) -> int:
        """Feature vectors per image handed to the connector."""
        keep_cls = self.select_feature == "cls_patch" and self.has_cls_token
        return self.num_patches + int(keep_cls)

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        self.tower.eval()  # frozen: dropout and the like stay off even while the rest of the model trains
        return self

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.tower.parameters()).dtype
        out = self.tower(pixel_values=pixel_values.to(dtype), output_hidden_states=True)
        features = out.hidden_states[self.select_layer]
        if self.has_cls_token and self.select_feature == "patch":
            features = features[:, 1:]
        return features
