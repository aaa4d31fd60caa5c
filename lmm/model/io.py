"""Every way to load (and save) an lmm model, in one place.

- lmm model folders (save_lmm_model / load_lmm_model): plain Hugging Face folders (encoder/, llm/) plus the
  connector's weights and a model card. Every model folder is self-describing: encoder/preprocessor_config.json
  records the image preprocessing the model was trained with (size, mean, std, resample, and LLaVA's
  `image_aspect_ratio` pad/crop), so evaluating or exporting it never depends on the config of the run that reads it;
  llm/tokenizer_config.json keeps the tokenizer's `legacy` flag (lmm.model.llm.save_tokenizer).
- Hugging Face `LlavaForConditionalGeneration` checkpoints, a folder or an instance (from_hf_llava): lmm can evaluate
  or fine-tune released llava-hf checkpoints, and the parity tests prove that lmm computes what HF computes on the
  same weights. The other direction (lmm -> HF) is lmm.export, which shares the key layouts below.
- Whatever a user passes as `checkpoint=` (load_checkpoint -> LoadedModel): an lmm run folder (<run>, its
  <run>/instruct/model is read), a stage folder or a model folder (<stage>/model, with lmm_model.json); a Lightning
  checkpoint inside an lmm run, <run>/<stage>/checkpoints/last.ckpt, mapped to that stage's saved model folder (the
  stage's final weights; if the stage has none, because it has not finished or it is the align stage, which saves
  only its connector, the error names the folder to pass instead); a Hugging Face Llava folder. The image
  preprocessing always comes from the checkpoint, by its encoder's rule (VisionEncoder.image_transform), never from
  the config of the run that reads it.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    PretrainedConfig,
)

from lmm.log import log
from lmm.model.build import build_llava
from lmm.model.connector import Connector, LinearConnector, MLPConnector
from lmm.model.encoder import VisionEncoder
from lmm.model.llava import LlavaModel
from lmm.model.llm import load_llm, load_tokenizer, save_tokenizer
from lmm.model.preprocess import PREPROCESSOR, ImageTransform
from lmm.model.tiled import TiledConnector
from lmm.model.tiling import TilingSpec

# ---------------------------------------------------------------------------------------------------- lmm model folders
MODEL_CARD = "lmm_model.json"


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v.contiguous() for k, v in state.items() if k.startswith(prefix)}


def _training_transform(model: LlavaModel, config: DictConfig | None, stage: str) -> ImageTransform:
    """What the stage fed the encoder when the caller does not say: the configured encoder's processor (local folder
    or hub id, which training already resolved) with the stage's pad/crop, by the encoder's one rule."""
    aspect = str(OmegaConf.select(config, f"stage.{stage}.image_aspect") or "pad") if config is not None else "pad"
    source = OmegaConf.select(config, "model.encoder.pretrained") if config is not None else None
    return model.encoder.image_transform(aspect, source=None if source is None else str(source))


def model_folder(path: str | Path) -> Path | None:
    """The lmm model folder at `path` (a model folder, a stage folder holding model/, or a run holding
    instruct/model), or None."""
    path = Path(path)
    for candidate in (path, path / "model", path / "instruct" / "model"):
        if (candidate / MODEL_CARD).exists():
            return candidate
    return None


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
            raise ValueError(f"the image preprocessing crops images to {transform.image_size}px, but the saved "
                             f"tower takes {model.encoder.image_size}px images")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file(_sub(state, "connector."), str(out_dir / "connector.safetensors"))
    if connector_only:
        return
    folder = out_dir / "model"
    model.llm.save_pretrained(folder / "llm", state_dict=_sub(state, "llm."))
    model.encoder.tower.save_pretrained(folder / "encoder", state_dict=_sub(state, "encoder.tower."))
    if tokenizer is not None:
        save_tokenizer(tokenizer, folder / "llm")
    shutil.copy(out_dir / "connector.safetensors", folder / "connector.safetensors")
    (folder / "encoder" / PREPROCESSOR).write_text(json.dumps(transform.processor_config(), indent=2) + "\n")
    card = {"encoder": {"select_layer": model.encoder.select_layer, "select_feature": model.encoder.select_feature},
            "connector": model.connector.partial_config(),
            "max_length": model.max_length}
    (folder / MODEL_CARD).write_text(json.dumps(card, indent=2))


def load_lmm_model(folder: str | Path, dtype: str | None = None) -> tuple[LlavaModel, Any]:
    """Load a `model/` folder written by save_lmm_model: (LlavaModel, tokenizer), every part in `dtype` if given.

    The encoder remembers its folder, so `model.encoder.image_transform()` is the preprocessing the folder records.
    """
    folder = Path(folder)
    if (folder / "model" / MODEL_CARD).exists():
        folder = folder / "model"
    if not (folder / MODEL_CARD).exists():
        raise FileNotFoundError(f"{folder} is not an lmm model folder (no {MODEL_CARD})")
    card = json.loads((folder / MODEL_CARD).read_text())
    encoder = VisionEncoder.from_pretrained(str(folder / "encoder"), **card["encoder"], dtype=dtype)
    model = build_llava(encoder, card["connector"], load_llm(str(folder / "llm"), dtype=dtype),
                        max_length=card["max_length"], connector_state=load_file(str(folder / "connector.safetensors")),
                        dtype=dtype)
    return model, load_tokenizer(str(folder / "llm"), model_max_length=card["max_length"])


# --------------------------------------------------------------------------------------- Hugging Face Llava checkpoints
# Prefixes of a LlavaForConditionalGeneration state dict: (vision tower, projector, language model body, lm_head).
LLAVA_LAYOUT = ("model.vision_tower.", "model.multi_modal_projector.", "model.language_model.", "lm_head.")
LEGACY_LLAVA_LAYOUT = ("vision_tower.", "multi_modal_projector.", "language_model.model.", "language_model.lm_head.")
NEWLINE_KEYS = ("model.image_newline", "image_newline")  # LLaVA-NeXT's row-end vector (new, legacy layout)
STRATEGY_TO_FEATURE = {"default": "patch", "full": "cls_patch"}  # vision_feature_select_strategy -> select_feature
NESTED_TOWERS = ("clip", "clip_vision_model", "siglip", "siglip_vision_model")  # 4.x nests them in vision_model.


def _read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF checkpoint folder (single file or shards, safetensors or legacy .bin)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors or pytorch_model*.bin weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)) if f.suffix == ".safetensors" else
                     torch.load(f, map_location="cpu", weights_only=True))
    return state


def split_llava_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], ...]:
    """Split a Llava state dict (new or legacy key layout) into (vision tower, projector, LM body, lm_head) parts.

    The returned keys are relative to each part, e.g. `vision_model.encoder...`, `linear_1.weight`, `layers.0...`,
    `weight`. Both layouts exist in the wild (spec §7.2), so a checkpoint of either kind is accepted.
    """
    layout = LLAVA_LAYOUT if any(k.startswith(LLAVA_LAYOUT[0]) for k in state) else LEGACY_LLAVA_LAYOUT
    parts: tuple[dict[str, torch.Tensor], ...] = ({}, {}, {}, {})
    for key, value in state.items():
        for prefix, part in zip(layout, parts, strict=True):
            if key.startswith(prefix):
                part[key[len(prefix):]] = value
                break
    if not parts[0] or not parts[1] or not parts[2]:
        raise ValueError("not a Llava state dict: vision tower, projector or language model weights are missing")
    return parts


def _build(factory: Any, config: PretrainedConfig, dtype: torch.dtype, attn_implementation: str | None) -> nn.Module:
    attn = {} if attn_implementation is None else {"attn_implementation": attn_implementation}
    return factory.from_config(config, dtype=dtype, **attn)


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{what}: missing keys {missing[:5]}..., unexpected keys {unexpected[:5]}... "
                         f"({len(missing)} missing, {len(unexpected)} unexpected)")


def _connector_from_projector(config: LlavaConfig, proj: dict[str, torch.Tensor], in_dim: int,
                              out_dim: int) -> Connector:
    """HF projector weights → MLPConnector (gelu), or LinearConnector (act "linear" with an identity linear_2)."""
    if not config.multimodal_projector_bias:
        raise NotImplementedError("a projector without biases has no lmm connector")
    act = config.projector_hidden_act
    if act == "gelu":
        connector: Connector = MLPConnector(in_dim, out_dim, depth=2)
        connector.proj.load_state_dict({"0.weight": proj["linear_1.weight"], "0.bias": proj["linear_1.bias"],
                                        "2.weight": proj["linear_2.weight"], "2.bias": proj["linear_2.bias"]})
        return connector
    if act == "linear":
        w2, b2 = proj["linear_2.weight"], proj["linear_2.bias"]
        if torch.equal(w2, torch.eye(out_dim, dtype=w2.dtype)) and not b2.any():
            connector = LinearConnector(in_dim, out_dim)
            connector.proj.load_state_dict({"weight": proj["linear_1.weight"], "bias": proj["linear_1.bias"]})
            return connector
        raise NotImplementedError("projector_hidden_act 'linear' with a non-identity linear_2 has no exact lmm "
                                  "connector (folding the two layers would not be bit-exact)")
    raise NotImplementedError(f"projector_hidden_act {act!r}: lmm's connectors use exact GELU or none")


def _load_tokenizer(folder: Path, max_length: int) -> Any:
    """The checkpoint's tokenizer with lmm's conventions (right padding, a pad token), or None if it has none."""
    if not any((folder / name).exists() for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        return None
    return load_tokenizer(str(folder), model_max_length=max_length)


def _anyres_connector(config: LlavaNextConfig, inner: Connector, state: dict[str, torch.Tensor],
                      tile: int) -> TiledConnector:
    """LLaVA-NeXT's anyres + spatial_unpad around the imported projector, with its `image_newline`."""
    newline = next((state[k] for k in NEWLINE_KEYS if k in state), None)
    if newline is None:
        raise ValueError("a LlavaNext state dict without image_newline")
    spec = TilingSpec("anyres", tile, grid_pinpoints=tuple(tuple(p) for p in config.image_grid_pinpoints))
    connector = TiledConnector(inner.in_dim, inner.out_dim, inner, spec)
    connector.image_newline.data.copy_(newline)
    return connector


def from_hf_llava(path_or_model: str | Path | LlavaForConditionalGeneration | LlavaNextForConditionalGeneration,
                  max_length: int = 2048, attn_implementation: str | None = None,
                  dtype: str | None = None) -> tuple[LlavaModel, Any]:
    """Load an HF Llava or LlavaNext (a folder or an instance) as an lmm LlavaModel; returns (model, tokenizer or None).

    A LlavaNext (anyres, spec §6.2) becomes a tiled model: its projector wrapped in a TiledConnector that holds its
    `image_grid_pinpoints` and `image_newline`; its images are then given as tiles + image_sizes (TiledTransform).

    The LLM keeps its full vocabulary, the HF image token's rows included (lmm never feeds that id: its
    placeholder is IMAGE_TOKEN_INDEX). Weights are copied, so the lmm model never aliases an HF instance. `dtype`
    (e.g. "float16") builds every part in it; default: the checkpoint's. The encoder of a folder remembers the folder,
    so `model.encoder.image_transform()` is the folder's image processor.
    """
    tokenizer, folder = None, None
    if isinstance(path_or_model, LlavaForConditionalGeneration | LlavaNextForConditionalGeneration):
        config = path_or_model.config
        state = path_or_model.state_dict()
    else:
        folder = Path(path_or_model)
        config = AutoConfig.from_pretrained(str(folder))
        if not isinstance(config, LlavaConfig | LlavaNextConfig):
            raise ValueError(f"{folder} holds a {type(config).__name__}, not a LlavaConfig or LlavaNextConfig")
        state = _read_state_dict(folder)
        tokenizer = _load_tokenizer(folder, max_length)
    vision_state, proj_state, lm_state, head_state = split_llava_state(state)

    layer = config.vision_feature_layer
    if not isinstance(layer, int):
        raise NotImplementedError(f"vision_feature_layer={layer!r}: lmm's encoder selects one layer")
    strategy = config.vision_feature_select_strategy
    if strategy not in STRATEGY_TO_FEATURE:
        raise NotImplementedError(f"vision_feature_select_strategy {strategy!r}")
    torch_dtype = getattr(torch, dtype) if dtype is not None else \
        next(v.dtype for v in lm_state.values() if v.is_floating_point())
    vision_attn = attn_implementation or getattr(config.vision_config, "_attn_implementation", None)
    text_attn = attn_implementation or getattr(config.text_config, "_attn_implementation", None)

    tower = _build(AutoModel, config.vision_config, torch_dtype, vision_attn)
    if not hasattr(tower, "vision_model"):  # a transformers-4 name (`vision_model.embeddings...`) on a flat tower
        vision_state = {k.removeprefix("vision_model."): v for k, v in vision_state.items()}
    _load_strict(tower, vision_state, "vision tower")
    encoder = VisionEncoder(tower, select_layer=layer, select_feature=STRATEGY_TO_FEATURE[strategy], source=folder)
    if strategy == "default" and not encoder.has_cls_token:
        raise NotImplementedError("strategy 'default' drops the first token, but this tower has no CLS token")

    text_config = copy.deepcopy(config.text_config)
    tied = bool(config.tie_word_embeddings or getattr(text_config, "tie_word_embeddings", False))
    text_config.tie_word_embeddings = tied
    llm = _build(AutoModelForCausalLM, text_config, torch_dtype, text_attn)
    llm_state = {f"{llm.base_model_prefix}.{k}": v for k, v in lm_state.items()}
    head_name = next(n for n, m in llm.named_modules() if m is llm.get_output_embeddings())
    if not head_state and tied:
        head_state = {"weight": lm_state["embed_tokens.weight"]}
    llm_state.update({f"{head_name}.{k}": v for k, v in head_state.items()})
    _load_strict(llm, llm_state, "language model")
    llm.config.use_cache = False  # lmm's training default; generate turns the cache on
    if llm.generation_config.pad_token_id is None and getattr(config, "pad_token_id", None) is not None:
        llm.generation_config.pad_token_id = config.pad_token_id  # llava-hf keeps the pad id on the outer config

    connector = _connector_from_projector(config, proj_state, encoder.hidden_size, text_config.hidden_size)
    if isinstance(config, LlavaNextConfig):
        if strategy != "default":
            raise NotImplementedError("anyres with the CLS token kept: lmm tiles need a square grid of patches")
        connector = _anyres_connector(config, connector, state, encoder.image_size)
    model = build_llava(encoder, connector, llm, max_length=max_length, dtype=torch_dtype)
    if not model.tiled and model.num_visual_tokens != config.image_seq_length:
        # Not fatal: HF counts the image tokens in input_ids, image_seq_length only informs processors.
        warnings.warn(f"image_seq_length={config.image_seq_length} but the model emits {model.num_visual_tokens} "
                      "visual tokens", stacklevel=2)
    return model, tokenizer


# -------------------------------------------------------------------------------------------- checkpoint= (any of them)
class LoadedModel(NamedTuple):
    """A loaded model and what evaluation needs to know about it."""

    model: LlavaModel
    tokenizer: Any
    image_processor: ImageTransform  # the checkpoint's own preprocessing (size, mean, std, pad/crop)
    model_id: str  # written into every answer line
    source: str  # "lmm" or "hf_llava"


def _model_id(folder: Path) -> str:
    """The run id for <run>/instruct/model, the stage folder's name for <stage>/model, else the folder's name."""
    if folder.name != "model":
        return folder.name
    return folder.parent.parent.name if folder.parent.name == "instruct" else folder.parent.name


def _model_of_lightning_checkpoint(given: Path, p: Path) -> Path:
    """<stage>/checkpoints/last.ckpt (or the checkpoints folder) -> <stage>/model, or an error naming what to pass.

    A Lightning checkpoint holds the training state, not a loadable model; the stage writes its model folder when
    it finishes, and that folder is what evaluation reads.
    """
    ckpt_dir = p if p.name == "checkpoints" else p.parent  # last.ckpt is a folder when sharded (FSDP)
    if ckpt_dir.name != "checkpoints":
        raise ValueError(f"{given} is a Lightning checkpoint outside an lmm run (expected "
                         "<run>/<stage>/checkpoints/last.ckpt): pass an lmm model folder (<run>/instruct/model, with "
                         f"{MODEL_CARD}) or a Hugging Face Llava folder")
    stage_dir = ckpt_dir.parent
    done = stage_dir / "stage.json"
    stage = json.loads(done.read_text()).get("stage") if done.exists() else stage_dir.name.split("-")[0]
    run_hint = f"{given.parent.parent.parent}/instruct/model" if given.parent.name == "checkpoints" else \
        "<run>/instruct/model"
    if stage == "align":
        raise ValueError(f"{given} is an align-stage checkpoint: the align stage trains only the connector and saves "
                         f"no model folder. Evaluate the instruct stage instead: checkpoint={run_hint}")
    model = stage_dir / "model"
    if p.name not in ("checkpoints", "last.ckpt"):
        raise ValueError(f"{given}: only last.ckpt maps to the stage's saved model ({model}, its final weights); "
                         f"an intermediate checkpoint cannot be evaluated: pass checkpoint={model}")
    if not (model / MODEL_CARD).exists():
        raise ValueError(f"{given}: the stage folder {stage_dir} has no model/ folder yet (it is written when the "
                         "stage finishes; resume the run with the same run_id to finish it), then pass "
                         f"checkpoint={model}")
    log.info(f"checkpoint {given} -> the stage's saved model folder {model}")
    return model


def load_checkpoint(path: str | os.PathLike, dtype: str | None = None) -> LoadedModel:
    """Load an lmm run/stage/model folder, a Lightning last.ckpt inside an lmm run, or a Hugging Face Llava folder.

    `dtype` (e.g. "float16", `eval.dtype`) loads every part, encoder included, in it (a 13B model never sits in host
    memory in fp32). The returned image_processor is the checkpoint's own preprocessing, by its encoder's rule
    (VisionEncoder.image_transform: checked against the encoder's image_size).
    """
    given = Path(path).expanduser()
    p = given.resolve()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint not found: {p}")
    if p.suffix == ".ckpt" or (p.is_dir() and p.name == "checkpoints"):
        p = _model_of_lightning_checkpoint(given, p)
    folder = model_folder(p)
    if folder is not None:
        model, tokenizer = load_lmm_model(folder, dtype=dtype)
        return LoadedModel(model, tokenizer, model.encoder.image_transform(), _model_id(folder), "lmm")
    config = p / "config.json"
    if config.exists() and json.loads(config.read_text()).get("model_type") in ("llava", "llava_next"):
        model, tokenizer = from_hf_llava(p, dtype=dtype)
        if tokenizer is None:
            raise FileNotFoundError(f"{p}: the Llava folder has no tokenizer files")
        return LoadedModel(model, tokenizer, model.encoder.image_transform(), p.name, "hf_llava")
    raise ValueError(f"{p} is neither an lmm run/model folder (with {MODEL_CARD}) nor a Hugging Face Llava folder")
