"""Saving and loading lmm models as plain Hugging Face folders (encoder/, llm/) plus the connector's weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from safetensors.torch import save_file

from lmm.model.encoder import VisionEncoder
from lmm.model.llava import LlavaModel
from lmm.model.llm import load_llm, load_tokenizer

MODEL_CARD = "lmm_model.json"


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}


def save_lmm_model(state: dict[str, torch.Tensor], model: LlavaModel, out_dir: Path, tokenizer: Any = None,
                   config: DictConfig | None = None, connector_only: bool = False) -> None:
    """Write `connector.safetensors` and, unless `connector_only`, a self-contained `model/` folder."""
    out_dir = Path(out_dir)
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
    if config is not None:  # the image processor's settings travel with the encoder
        source = Path(str(config.model.encoder.pretrained)) / "preprocessor_config.json"
        if source.exists():
            shutil.copy(source, folder / "encoder" / "preprocessor_config.json")
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
