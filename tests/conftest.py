"""Shared fixtures: tiny in-memory LLaVA models, the tiny world built once per session, the shared fixtures folder."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from lmm.model.connector import MLPConnector
from lmm.model.encoder import VisionEncoder
from lmm.model.llava import LlavaModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def tiny_llava(vocab: int = 96, image_size: int = 28, patch: int = 14, hidden: int = 32, seed: int = 0,
               connector=None) -> LlavaModel:
    """A random LlavaModel small enough for unit tests (CLIP 2 layers, Llama 2 layers), fp32, eager attention."""
    torch.manual_seed(seed)
    tower = CLIPVisionModel(CLIPVisionConfig(hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=2, image_size=image_size, patch_size=patch))
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=64,
                                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                       max_position_embeddings=256, attn_implementation="eager",
                                       bos_token_id=1, eos_token_id=2, pad_token_id=0))
    encoder = VisionEncoder(tower)
    connector = connector if connector is not None else MLPConnector(encoder.hidden_size, hidden)
    return LlavaModel(encoder, connector, llm, max_length=128)


class BatchConsumer(L.LightningModule):
    """One scalar parameter fitted to the batches' token ids: drives a Trainer over a DataModule's real batches
    when what is under test is the data side (callbacks, accounting), not the model."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.w - batch["input_ids"].float().mean()).pow(2).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=1e-3)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny world (backbones + a small dataset) built once for the whole test session."""
    from lmm.world.tiny import ensure_tiny_world

    cache = tmp_path_factory.mktemp("cache")
    ensure_tiny_world(str(cache / "tiny-world"), num_align=96, num_instruct=96, num_eval=16)
    return cache


@pytest.fixture
def llama_tokenizer_dir() -> Path:
    path = SHARED / "fixtures" / "llama-tokenizer"
    if not path.exists():
        pytest.skip(f"real Llama tokenizer fixture not found at {path}")
    return path
