"""Export of an lmm LlavaModel as a Hugging Face `LlavaForConditionalGeneration` folder (spec §7).

Why: the trained model then runs wherever transformers runs, with its tokenizer, chat template and image processor.
The other direction (reading HF Llava checkpoints) is lmm.model.io.from_hf_llava, which shares the key layouts.

Usage: `python -m lmm.export <lmm model folder (with lmm_model.json)> <out_dir> [--image-processor SRC]`.
"""

from __future__ import annotations

import argparse
import copy
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from tokenizers import AddedToken
from torch import nn
from transformers import (
    AutoImageProcessor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
)

from lmm.constants import IMAGE_PLACEHOLDER
from lmm.data.templates import VicunaV1Template
from lmm.model.connector import LinearConnector, MLPConnector
from lmm.model.io import LEGACY_LLAVA_LAYOUT, LLAVA_LAYOUT, NESTED_TOWERS
from lmm.model.llava import LlavaModel
from lmm.model.llm import persisted_flags
from lmm.model.preprocess import ImageTransform

# ---- lmm → HF ------------------------------------------------------------------------------------------------------


def _anyres_pinpoints(model: LlavaModel) -> list[list[int]] | None:
    """The (height, width) pinpoints of a tiled anyres model (None for an untiled one); HD has no HF counterpart."""
    if not model.tiled:
        return None
    spec = model.connector.spec
    if spec.mode != "anyres" or not spec.unpad or not spec.newline:
        raise NotImplementedError(f"tiling {spec.to_config()}: only anyres with spatial_unpad and image_newline "
                                  "(LLaVA-NeXT) exists in transformers")
    return [list(p) for p in spec.grid_pinpoints]


def _projector_state(connector: nn.Module) -> tuple[str, dict[str, torch.Tensor]]:
    """(projector_hidden_act, linear_1/linear_2 weights) for a connector that HF's projector can express."""
    if isinstance(connector, MLPConnector):
        linears = [m for m in connector.proj if isinstance(m, nn.Linear)]
        if len(linears) == 2:
            return "gelu", {"linear_1.weight": linears[0].weight, "linear_1.bias": linears[0].bias,
                            "linear_2.weight": linears[1].weight, "linear_2.bias": linears[1].bias}
        if len(linears) == 1:
            linear = linears[0]
        else:
            raise NotImplementedError(f"MLPConnector with {len(linears)} linear layers: HF's projector has two")
    elif isinstance(connector, LinearConnector):
        linear = connector.proj
    else:
        raise NotImplementedError(f"{type(connector).__name__} has no Hugging Face Llava equivalent; only "
                                  "LinearConnector and 2-layer MLPConnector (mlp2x_gelu) can be exported")
    # Spec §7.3: a single Linear is exactly linear_1 → identity activation → identity linear_2 with zero bias.
    eye = torch.eye(linear.out_features, dtype=linear.weight.dtype)
    return "linear", {"linear_1.weight": linear.weight, "linear_1.bias": linear.bias,
                      "linear_2.weight": eye, "linear_2.bias": torch.zeros(linear.out_features, dtype=eye.dtype)}


def vicuna_v1_chat_template(eos_token: str, template: VicunaV1Template | None = None) -> str:
    """Jinja for lmm's vicuna_v1 prompt "{system} USER: <image>\\n{q} ASSISTANT: {a}</s>USER: ..." (no BOS: the
    tokenizer adds it). As in lmm's data, the turn with the image is `<image>\\n` + its stripped text."""
    t = template or VicunaV1Template()
    consts = {"SYSTEM": t.system, "SEP": t.sep, "SEP2": eos_token if t.sep2 is None else t.sep2,
              "IMG": IMAGE_PLACEHOLDER, "USER": t.roles[0] + ": ", "ASSISTANT": t.roles[1] + ":"}
    return "".join(f"{{%- set {k} = {json.dumps(v)} -%}}" for k, v in consts.items()) + (  # JSON strings are Jinja's
        "{%- macro text(c) -%}{{- c if c is string else c | selectattr('type', 'equalto', 'text') | map(attribute="
        "'text') | join(' ') -}}{%- endmacro -%}{%- set ns = namespace(system=SYSTEM, turns=messages) -%}"
        "{%- if messages and messages[0]['role'] == 'system' -%}{%- set ns.system = text(messages[0]['content']) -%}"
        "{%- set ns.turns = messages[1:] -%}{%- endif -%}{{- ns.system + SEP -}}{%- for m in ns.turns -%}"
        "{%- if m['role'] != ['user', 'assistant'][loop.index0 % 2] -%}"
        "{{- raise_exception('vicuna_v1: roles must alternate user/assistant, user first') -}}{%- endif -%}"
        "{%- set t = text(m['content']) -%}{%- set n = 0 if m['content'] is string else m['content'] | "
        "selectattr('type', 'equalto', 'image') | list | length -%}{%- if n > 0 or IMG in t -%}"
        "{%- set t = (IMG + '\\n') * ([n, 1] | max) + (t | replace(IMG, '') | trim) -%}{%- endif -%}"
        "{{- USER + t + SEP if m['role'] == 'user' else ASSISTANT + ' ' + t + SEP2 -}}{%- endfor -%}"
        "{{- ASSISTANT if add_generation_prompt else '' -}}")


def _legacy_state(state: dict[str, torch.Tensor], tower: nn.Module) -> dict[str, torch.Tensor]:
    """New-layout keys → the transformers-4 names (spec §7.2, §7.3), which transformers 5 renames on load too."""
    nest = "vision_model." if tower.config.model_type in NESTED_TOWERS and not hasattr(tower, "vision_model") else ""
    renames = [*zip(LLAVA_LAYOUT[1:], LEGACY_LLAVA_LAYOUT[1:], strict=True),
               (LLAVA_LAYOUT[0], LEGACY_LLAVA_LAYOUT[0] + nest), ("model.image_newline", "image_newline")]
    return {next(old + k[len(new):] for new, old in renames if k.startswith(new)): v for k, v in state.items()}


def _grow_rows(weight: torch.Tensor, rows: int) -> torch.Tensor:
    """Append rows equal to the mean row (the new token ids are never predicted in lmm's outputs anyway)."""
    if rows <= weight.shape[0]:
        return weight
    extra = weight.float().mean(0, keepdim=True).to(weight.dtype).expand(rows - weight.shape[0], -1)
    return torch.cat([weight, extra])


def _image_processor(source: Any, image_size: int, pad_to_square: bool,
                     pinpoints: list[list[int]] | None = None) -> LlavaImageProcessorPil | LlavaNextImageProcessorPil:
    """A LlavaImageProcessor (PIL backend) with the source's resize/crop/normalisation and LLaVA's square padding;
    with `pinpoints`, a LlavaNextImageProcessor (anyres tiles; its canvas padding is black, its own rule)."""
    if isinstance(source, ImageTransform):  # the encoder's own preprocessing, e.g. load_checkpoint(...).image_processor
        d = source.processor_config()
        settings: dict[str, Any] = {k: d[k] for k in ("size", "crop_size", "image_mean", "image_std", "resample",
                                                      "rescale_factor")}
    else:
        proc = source if hasattr(source, "to_dict") else AutoImageProcessor.from_pretrained(str(source))
        d = proc.to_dict()
        settings = {k: d[k] for k in ("size", "crop_size", "image_mean", "image_std", "resample", "do_center_crop",
                                      "rescale_factor") if d.get(k) is not None}
    crop = settings.get("crop_size") or {"height": image_size, "width": image_size}
    if (crop.get("height"), crop.get("width")) != (image_size, image_size):
        raise ValueError(f"image processor crops to {crop}, but the vision tower takes {image_size}px images")
    if pinpoints is not None:
        return LlavaNextImageProcessorPil(image_grid_pinpoints=pinpoints, do_pad=True, **settings)
    return LlavaImageProcessorPil(do_pad=pad_to_square, **settings)


def export_hf_llava(model: LlavaModel, tokenizer: Any, out_dir: str | Path, image_processor_source: Any = None,
                    pad_to_square: bool | None = None, pad_vocab_to_multiple_of: int | None = None,
                    chat_template: str | None = None) -> Path:
    """Write an HF Llava folder (weights, config, tokenizer, processor) that reproduces lmm's outputs.

    `<image>` becomes a special token of a copy of the tokenizer (which pads on the left, for batched generation);
    the LLM's embedding and lm_head grow to cover it (new rows = mean row). `image_processor_source` (a folder/hub
    id, an image-processor instance or an lmm ImageTransform; None: the encoder's own, model.encoder.image_transform())
    gives resize/normalisation settings; `pad_to_square` turns on LLaVA-1.5's mean-colour padding (None: an
    ImageTransform source's own pad/crop, else pad). The tokenizer keeps its `legacy` flag. The weights
    carry the transformers-4 key names, which 4.x and 5 both load; `chat_template` (default: lmm's vicuna_v1 prompt,
    see vicuna_v1_chat_template) goes to the processor and tokenizer. The lmm model and tokenizer are not modified.
    A tiled model (input=anyres) exports as LlavaNextForConditionalGeneration with its `image_grid_pinpoints`
    ((height, width), as HF reads them), `image_newline` and a LlavaNextProcessor; input=hd has no HF counterpart.
    """
    pinpoints = _anyres_pinpoints(model)
    if image_processor_source is None:
        image_processor_source = model.encoder.image_transform()
    if pad_to_square is None:
        pad_to_square = getattr(image_processor_source, "aspect", "pad") == "pad"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    act, proj_state = _projector_state(model.connector.inner if model.tiled else model.connector)
    encoder, llm = model.encoder, model.llm

    tok = copy.deepcopy(tokenizer)
    if IMAGE_PLACEHOLDER not in tok.get_vocab():
        tok.add_tokens([AddedToken(IMAGE_PLACEHOLDER, special=True, normalized=False)], special_tokens=True)
    image_token_id = tok.convert_tokens_to_ids(IMAGE_PLACEHOLDER)
    if tok.pad_token is None:
        tok.pad_token = tok.unk_token if tok.unk_token is not None else tok.eos_token
    tok.padding_side = "left"  # the export is for inference: batched HF generation wants left padding
    chat_template = tok.chat_template = chat_template or vicuna_v1_chat_template(tok.eos_token)

    old_vocab = llm.get_input_embeddings().weight.shape[0]
    vocab = max(old_vocab, len(tok), image_token_id + 1)
    if pad_vocab_to_multiple_of:
        vocab = -(-vocab // pad_vocab_to_multiple_of) * pad_vocab_to_multiple_of

    text_config = copy.deepcopy(llm.config)
    text_config.vocab_size = vocab
    text_config.use_cache = True
    if tok.pad_token_id is not None:
        text_config.pad_token_id = tok.pad_token_id
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    keep_cls = encoder.select_feature == "cls_patch" or not encoder.has_cls_token
    dtype = llm.get_input_embeddings().weight.dtype
    kinds = (LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor) if pinpoints is None else \
        (LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor)
    extra = {} if pinpoints is None else {"image_grid_pinpoints": pinpoints}
    config = kinds[0](vision_config=copy.deepcopy(encoder.tower.config).to_dict(),
                      text_config=text_config.to_dict(), image_token_index=image_token_id,
                      image_seq_length=encoder.num_features if model.tiled else model.num_visual_tokens,
                      projector_hidden_act=act, vision_feature_select_strategy="full" if keep_cls else "default",
                      vision_feature_layer=encoder.select_layer, multimodal_projector_bias=True,
                      tie_word_embeddings=tied, pad_token_id=text_config.pad_token_id, **extra)
    config.dtype = dtype

    state: dict[str, torch.Tensor] = {}
    state.update({f"model.vision_tower.{k}": v for k, v in encoder.tower.state_dict().items()})
    state.update({f"model.multi_modal_projector.{k}": v.to(dtype) for k, v in proj_state.items()})
    if pinpoints is not None:
        state["model.image_newline"] = model.connector.image_newline.detach().to(dtype)
    body = getattr(llm, llm.base_model_prefix)
    state.update({f"model.language_model.{k}": v for k, v in body.state_dict().items()})
    embed_key = "model.language_model." + next(n for n, m in body.named_modules() if m is body.get_input_embeddings())
    state[f"{embed_key}.weight"] = _grow_rows(state[f"{embed_key}.weight"], vocab)
    if not tied:
        state["lm_head.weight"] = _grow_rows(llm.get_output_embeddings().weight, vocab)

    with torch.device("meta"):
        hf = kinds[1](config)
    missing, unexpected = hf.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (tied and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"export: missing {missing}, unexpected {unexpected}")
    hf.generation_config.bos_token_id = tok.bos_token_id
    hf.generation_config.eos_token_id = llm.generation_config.eos_token_id
    hf.generation_config.pad_token_id = tok.pad_token_id
    rope = getattr(config.text_config, "rope_parameters", None) or {}
    if "rope_theta" in rope:  # transformers 4 reads rope_theta, not rope_parameters (else: 10000, silently)
        config.text_config.rope_theta = rope["rope_theta"]
    if rope.get("rope_type", "default") != "default":
        warnings.warn(f"rope_type {rope['rope_type']!r}: transformers 4 will not read rope_parameters", stacklevel=2)
    config.architectures = [type(hf).__name__]
    config.save_pretrained(str(out))
    hf.generation_config.save_pretrained(str(out))
    # The transformers-4 key names, which transformers 5 also loads (hf.save_pretrained would write 5's names).
    save_torch_state_dict(_legacy_state(state, encoder.tower), str(out), metadata={"format": "pt"})

    processor = kinds[2](image_processor=_image_processor(image_processor_source, encoder.image_size,
                                                           pad_to_square, pinpoints),
                               tokenizer=tok, patch_size=encoder.tower.config.patch_size,
                               vision_feature_select_strategy=config.vision_feature_select_strategy,
                               chat_template=chat_template, image_token=IMAGE_PLACEHOLDER,
                               num_additional_image_tokens=int(encoder.has_cls_token))
    processor.save_pretrained(str(out))  # writes chat_template.jinja too
    # transformers 5 keeps the image processor inside processor_config.json; a separate preprocessor_config.json
    # also serves AutoImageProcessor, older transformers and lmm's own ImageTransform.from_pretrained.
    processor.image_processor.save_pretrained(str(out))
    # transformers 4.4x reads the template from chat_template.json (processor) and tokenizer_config.json (tokenizer).
    (out / "chat_template.json").write_text(json.dumps({"chat_template": chat_template}, indent=2) + "\n")
    tok_config = json.loads((out / "tokenizer_config.json").read_text()) | {"chat_template": chat_template} | \
        persisted_flags(tok)
    if isinstance(tok_config.get("extra_special_tokens"), list):  # 4.5x wants a dict there (5 reads the old name)
        tok_config["additional_special_tokens"] = tok_config.pop("extra_special_tokens")
    (out / "tokenizer_config.json").write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n")
    return out


def _main(argv: list[str] | None = None) -> None:
    from lmm.model.io import load_lmm_model

    parser = argparse.ArgumentParser(prog="python -m lmm.export", description=__doc__.splitlines()[0])
    parser.add_argument("lmm_model", help="folder written by lmm.model.io.save_lmm_model (holds lmm_model.json)")
    parser.add_argument("out_dir", help="where to write the Hugging Face Llava folder")
    parser.add_argument("--image-processor", default=None,
                        help="folder or hub id of the image processor (default: the preprocessing recorded in the "
                             "model folder, i.e. what it was trained with)")
    parser.add_argument("--no-pad", action="store_true",
                        help="resize + centre-crop instead of square padding (default: the model folder's recorded "
                             "pad/crop; LLaVA-1.5 pads)")
    parser.add_argument("--pad-vocab-to-multiple-of", type=int, default=None)
    args = parser.parse_args(argv)

    folder = Path(args.lmm_model)
    model, tokenizer = load_lmm_model(folder)
    saved = model.encoder.image_transform()  # what the folder records: the preprocessing it was trained with
    source = args.image_processor or saved
    pad = not args.no_pad and saved.aspect == "pad"
    out = export_hf_llava(model, tokenizer, args.out_dir, image_processor_source=source,
                          pad_to_square=pad, pad_vocab_to_multiple_of=args.pad_vocab_to_multiple_of)
    config = json.loads((out / "config.json").read_text())
    print(f"[lmm.export] wrote {out}: image_token_index={config['image_token_index']} "
          f"image_seq_length={config['image_seq_length']} projector_hidden_act={config['projector_hidden_act']}")


if __name__ == "__main__":
    _main()
