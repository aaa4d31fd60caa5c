"""Sentinel ids shared by data, model and evaluation (the values of the LLaVA code base)."""

IGNORE_INDEX = -100  # label of a position that carries no loss
IMAGE_TOKEN_INDEX = -200  # input id of the image placeholder, replaced by the visual tokens inside the model
IMAGE_PLACEHOLDER = "<image>"  # the placeholder as it appears in LLaVA-format text

# Closed sets of config values, here so that config validation needs no heavy import.
LOSS_NORMALIZATIONS = ("global_tokens", "llava")  # stage.<name>.loss_normalization (lmm/train/module.py)
PARTS = ("encoder", "connector", "llm")  # the trainable parts of a LlavaModel (stage.<name>.train)
TILINGS = ("hd", "anyres")  # input.tiling: LLaVA-1.5-HD or LLaVA-NeXT anyres tiles (lmm.model.tiling)
ASPECTS = ("pad", "crop")  # image_aspect: pad to a square with the mean colour, or resize + centre crop
ON_ERROR = ("error", "skip")  # bad input: raise naming file, record and reason, or a counted skip to rejects.jsonl
VERIFY_IMAGES = ("none", "header", "decode")  # conversion's image check: none, open the header, or decode fully
SELECT_FEATURES = ("patch", "cls_patch")  # the encoder's patch features, without or with the CLS token
