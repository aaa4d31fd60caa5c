"""Shared fixtures: tiny in-memory LLaVA models, the tiny world built once per session, the shared fixtures folder."""

from __future__ import annotations

import os
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
LLAMA_TOKENIZER = SHARED / "fixtures" / "llama-tokenizer"  # the real Llama-2 tokenizer files
POPE_GOLDEN = SHARED / "fixtures" / "golden" / "pope"  # LLaVA-1.5-13B's released POPE answers and the label files


def in_ci() -> bool:
    """True where the environment variable CI is set to anything but an explicit no (CI runs with CI=true)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no", "off")


def need_fixture(path: Path, what: str) -> Path:
    """`path` if it exists. Without it a test that needs it is skipped, with a reason naming the path, for a user who
    cloned the repo without ../shared; under CI (CI set) the missing fixture fails the test instead, so the fidelity
    tests never pass a CI run by silently skipping."""
    if path.exists():
        return path
    reason = f"{what} not found at {path}"
    if in_ci():
        pytest.fail(f"{reason}; CI={os.environ['CI']} requires the shared fixtures (../shared/fixtures next to the "
                    "repo) instead of skipping the tests that need them", pytrace=False)
    pytest.skip(reason)


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


SMALL_WORLD = "world=small"  # conf/world/small.yaml: the world the tests build once per session


def world_root(cache: Path) -> Path:
    """The folder of the small world under a cache dir (named by its spec's hash, as every world is)."""
    from tests.test_config import cfg_of

    return Path(cfg_of(SMALL_WORLD, f"paths.cache_dir={cache}").world.root)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache dir holding the small world (data + zoo), built once for the whole test session: tests pass
    `world=small paths.cache_dir=<it>` and build nothing."""
    from lmm.world.build import ensure_world
    from tests.test_config import cfg_of

    cache = tmp_path_factory.mktemp("cache")
    cfg = cfg_of(SMALL_WORLD, f"paths.cache_dir={cache}")
    ensure_world(cfg.world.root, cfg.world.spec, progress=False)
    return cache


@pytest.fixture
def llama_tokenizer_dir() -> Path:
    return need_fixture(LLAMA_TOKENIZER, "the real Llama-2 tokenizer fixture")


@pytest.fixture
def pope_golden_dir() -> Path:
    return need_fixture(POPE_GOLDEN, "the golden POPE fixture (LLaVA-1.5-13B answers, POPE labels)")
