"""Sentinel ids shared by data, model and evaluation (the values of the LLaVA code base)."""

IGNORE_INDEX = -100  # label of a position that carries no loss
IMAGE_TOKEN_INDEX = -200  # input id of the image placeholder, replaced by the visual tokens inside the model
IMAGE_PLACEHOLDER = "<image>"  # the placeholder as it appears in LLaVA-format text
