"""Saving and loading lmm models as plain Hugging Face folders (encoder/, llm/) plus the connector's weights.

Every model folder is self-describing: encoder/preprocessor_config.json records the image preprocessing the model
was trained with (size, mean, std, resample, and LLaVA's `image_aspect_ratio` pad/crop), so evaluating or exporting
it never depends on the config of the run that reads it.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import save_file

from lmm.data.images import CLIP_MEAN, CLIP_STD, ImageTransform
from lmm.model.encoder import VisionEncoder
from lmm.model.llava import LlavaModel
from lmm.model.llm import load_llm, load_tokenizer

MODEL_CARD = "lmm_model.json"
PREPROCESSOR = "preprocessor_config.json"
ASPECT_KEY = "image_aspect_ratio"  # LLaVA's name for pad/crop; HF image processors ignore the extra key
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}


# ------------------------------------------------------------------------------------------- image preprocessing
def image_processor_config(transform: ImageTransform) -> dict[str, Any]:
    """A CLIPImageProcessor-style preprocessor_config.json that reproduces `transform` (and names its aspect)."""
    side = transform.image_size
    return {"image_processor_type": "CLIPImageProcessor", "do_convert_rgb": True,
            "do_resize": True, "size": {"shortest_edge": transform.resize_size}, "resample": int(transform.resample),
            "do_center_crop": True, "crop_size": {"height": side, "width": side},
            "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": True, "image_mean": list(transform.mean), "image_std": list(transform.std),
            ASPECT_KEY: transform.aspect}


def with_aspect(transform: ImageTransform, aspect: str) -> ImageTransform:
    """The same preprocessing with another pad/crop choice."""
    if aspect == transform.aspect:
        return transform
    return ImageTransform(transform.image_size, transform.mean, transform.std, aspect, int(transform.resample),
                          transform.resize_size)


def encoder_image_size(config: dict[str, Any]) -> int | None:
    """The input resolution in a vision tower's (or a Llava model's) config.json dict."""
    size = config.get("image_size")
    if size is None and isinstance(config.get("vision_config"), dict):
        size = config["vision_config"].get("image_size")
    return None if size is None else int(size)


def default_transform(tower_config: dict[str, Any], aspect: str = "pad") -> ImageTransform:
    """The preprocessing a tower's own family uses at its resolution (CLIP or SigLIP statistics), when no
    preprocessor_config.json is at hand."""
    size = encoder_image_size(tower_config)
    if size is None:
        raise ValueError("the encoder config has no image_size: cannot derive its image preprocessing")
    vision = tower_config.get("vision_config") or {}
    kind = f"{tower_config.get('model_type', '')} {vision.get('model_type', '')}"
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if "siglip" in kind else (CLIP_MEAN, CLIP_STD)
    return ImageTransform(size, mean, std, aspect=aspect)


def _training_transform(model: LlavaModel, config: DictConfig | None, stage: str) -> ImageTransform:
    """What the stage fed the encoder: the configured encoder's processor (local folder or hub id, which training
    already resolved) with the stage's pad/crop; else the tower's family defaults at its resolution."""
    aspect = str(OmegaConf.select(config, f"stage.{stage}.image_aspect") or "pad") if config is not None else "pad"
    source = OmegaConf.select(config, "model.encoder.pretrained") if config is not None else None
    if source is not None:
        try:
            return ImageTransform.from_pretrained(str(source), aspect=aspect)
        except (OSError, ValueError) as e:
            warnings.warn(f"no image processor config for the encoder {source} ({type(e).__name__}); saving the "
                          f"{model.encoder.config.model_type} defaults at {model.encoder.image_size}px", stacklevel=3)
    return default_transform(model.encoder.config.to_dict(), aspect)


def saved_image_transform(folder: str | Path, tower_config: str | Path | None = None) -> ImageTransform | None:
    """The preprocessing recorded in `folder`/preprocessor_config.json, checked against the tower's image_size.

    `tower_config` defaults to `folder`/config.json. Returns None when the folder has no preprocessor config.
    The aspect is the file's own (see ImageTransform.from_pretrained).
    """
    folder = Path(folder)
    file = folder / PREPROCESSOR
    if not file.is_file():
        return None
    try:
        transform = ImageTransform.from_pretrained(file)
    except ValueError as e:  # e.g. an image_aspect_ratio that is neither pad nor crop
        raise ValueError(f"{file}: {e}") from e
    config_file = Path(tower_config) if tower_config is not None else folder / "config.json"
    if config_file.is_file():
        size = encoder_image_size(json.loads(config_file.read_text()))
        if size is not None and size != transform.image_size:
            raise ValueError(f"{file} crops images to {transform.image_size}px, but the encoder it belongs to "
                             f"({config_file}) takes {size}px images: the folder's image preprocessing does not "
                             "match its encoder")
    return transform


# ---------------------------------------------------------------------------------------------------- save / load
def save_lmm_model(state: dict[str, torch.Tensor], model: LlavaModel, out_dir: Path, tokenizer: Any = None,
                   config: DictConfig | None = None, connector_only: bool = False,
                   image_transform: ImageTransform | None = None, stage: str = "instruct") -> None:
    """Write `connector.safetensors` and, unless `connector_only`, a self-contained `model/` folder.

    The folder's encoder/preprocessor_config.json is `image_transform` if given, else the preprocessing `config`
    describes for `stage` (its encoder's processor + `stage.<stage>.image_aspect`), else the tower's defaults.
    """
    out_dir = Path(out_dir)
    transform = None
    if not connector_only:  # check before writing anything: a folder must never describe the wrong preprocessing
        transform = image_transform or _training_transform(model, config, stage)
        if transform.image_size != model.encoder.image_size:
            source = OmegaConf.select(config, "model.encoder.pretrained") if config is not None else None
            raise ValueError(f"the image preprocessing of encoder {source} crops to {transform.image_size}px, but "
                             f"the saved tower takes {model.encoder.image_size}px images")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_sub(state, "connector."), str(out_dir / "connector.safetensors"))
    if connector_only:
        return
    folder = out_dir / "model"
    model.llm.save_pretrained(folder / "llm", state_dict=_sub(state, "llm."))
    model.encoder.tower.save_pretrained(folder / "encoder", state_dict=_sub(state, "encoder.tower."))
    if tokenizer is not None:
        tokenizer.save_pretrained(folder / "llm")
    shutil.copy(out_dir / "connector.safetensors", folder / "connector.safetensors")
    (folder / "encoder" / PREPROCESSOR).write_text(json.dumps(image_processor_config(transform), indent=2) + "\n")
    card = {"encoder": {"select_layer": model.encoder.select_layer, "select_feature": model.encoder.select_feature},
            "connector": model.connector.partial_config(),
            "max_length": model.max_length}
    (folder / MODEL_CARD).write_text(json.dumps(card, indent=2))


def load_lmm_model(folder: str | Path, dtype: str | None = None) -> tuple[LlavaModel, Any]:
    """Load a `model/` folder written by save_lmm_model: (LlavaModel, tokenizer)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if (folder / "model" / MODEL_CARD).exists():
        folder = folder / "model"
    card_path = folder / MODEL_CARD
    if not card_path.exists():
        raise FileNotFoundError(f"{folder} is not an lmm model folder (no {MODEL_CARD})")
    card = json.loads(card_path.read_text())
    encoder = VisionEncoder.from_pretrained(str(folder / "encoder"), **card["encoder"])
    llm = load_llm(str(folder / "llm"), dtype=dtype)
    model = LlavaModel(encoder, instantiate(card["connector"]), llm, max_length=card["max_length"])
    model.connector.load_state_dict(load_file(str(folder / "connector.safetensors")))
    return model, load_tokenizer(str(folder / "llm"), model_max_length=card["max_length"])


def load_image_transform(folder: str | Path) -> ImageTransform:
    """The image preprocessing of an lmm model folder; folders saved before it was recorded get the tower's
    family defaults at the tower's resolution (with a warning)."""
    folder = Path(folder)
    if (folder / "model" / MODEL_CARD).exists():
        folder = folder / "model"
    transform = saved_image_transform(folder / "encoder")
    if transform is not None:
        return transform
    tower = json.loads((folder / "encoder" / "config.json").read_text())
    warnings.warn(f"{folder / 'encoder'} has no {PREPROCESSOR} (saved by an older lmm): using the "
                  f"{tower.get('model_type')} defaults at {encoder_image_size(tower)}px with pad", stacklevel=2)
    return default_transform(tower, "pad")
