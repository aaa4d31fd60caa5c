"""lmm: LLaVA-1.5-style large multimodal models, assembled from swappable parts and trained with Lightning + Hydra."""

__version__ = "0.1.0"
