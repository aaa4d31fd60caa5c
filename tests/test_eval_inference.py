"""Batched evaluation (left padding, KV cache, Lightning predict) gives LLaVA's one-at-a-time greedy answers, and
sharded answers are merged back in question order without duplicates."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from lmm.data.templates import VicunaV1Template
from lmm.eval.inference import (
    Decoding,
    EvalModule,
    QuestionDataset,
    _Collate,
    generate_one_by_one,
    make_loader,
    merge_answers,
    predict_answers,
)
from lmm.eval.tasks import GQA, ScienceQA
from lmm.model.connector import MLPConnector
from lmm.model.encoder import VisionEncoder
from lmm.model.llava import LlavaModel
from lmm.model.llm import load_llm, load_tokenizer
from lmm.model.preprocess import ImageTransform
from tests.conftest import world_root


def world_model(world: Path, seed: int = 0) -> tuple[LlavaModel, object, ImageTransform]:
    """The tiny world's backbones with a random connector and random LLM weights: its greedy answers vary a lot, so
    a mix-up between questions would show (the small world's LLM is pretrained for a few steps only)."""
    encoder = VisionEncoder.from_pretrained(str(world / "clip-tiny-res224"))
    llm = load_llm(str(world / "llama-tiny"))
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in llm.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    connector = MLPConnector(encoder.hidden_size, llm.config.hidden_size)
    model = LlavaModel(encoder, connector, llm, max_length=512).eval()
    return model, load_tokenizer(str(world / "llama-tiny")), ImageTransform.from_pretrained(
        str(world / "clip-tiny-res224"), aspect="pad")


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models are latency-bound; on a loaded 2-core machine a second torch thread only spins."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_world):
    world = world_root(tiny_world)
    eval_dir = world / "data" / "eval"
    sqa = ScienceQA(eval_dir / "scienceqa" / "llava_test_CQM-A.json", eval_dir / "scienceqa" / "images" / "test",
                    eval_dir / "scienceqa" / "problems.json", image_only=False, max_new_tokens=12)
    gqa = GQA(eval_dir / "gqa" / "llava_gqa_testdev_balanced.jsonl",
              eval_dir / "gqa" / "data" / "testdev_balanced_questions.json", eval_dir / "gqa" / "data" / "images",
              max_new_tokens=12)
    questions = gqa.questions() + sqa.questions()  # image and text-only prompts of different lengths
    for uid, q in enumerate(questions):
        q.uid = uid
    return (*world_model(world), questions)


def _trainer() -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, enable_checkpointing=False)


def test_batched_answers_equal_one_at_a_time(setup):
    model, tokenizer, transform, questions = setup
    template, decoding = VicunaV1Template(), Decoding(max_new_tokens=12)
    assert any(q.image is None for q in questions) and any(q.image is not None for q in questions)
    reference = generate_one_by_one(model, tokenizer, template, transform, questions, decoding)
    assert len(set(reference)) > len(reference) // 3, "answers too uniform to tell a mix-up apart"
    dataset = QuestionDataset(questions, template, tokenizer, transform)
    lengths = [len(p) for p in dataset.prompts]
    assert len(set(lengths)) > 1  # batches really are padded
    module = EvalModule(model, tokenizer, template.stop_token_ids(tokenizer), decoding)
    batched = predict_answers(_trainer(), module, make_loader(dataset, tokenizer, batch_size=5), len(questions))
    assert batched == reference


def test_stop_at_eos_and_budget(setup):
    model, tokenizer, transform, questions = setup
    template = VicunaV1Template()
    short = generate_one_by_one(model, tokenizer, template, transform, questions[:3], Decoding(max_new_tokens=2))
    full = generate_one_by_one(model, tokenizer, template, transform, questions[:3], Decoding(max_new_tokens=12))
    # greedy: the 2-token answers begin the 12-token ones, and the budget cut them (re-tokenizing decoded text does
    # not give back the token count: "ar" + "-shaped" decodes to a word that splits into three pieces)
    assert all(f.startswith(s) for s, f in zip(short, full, strict=True)), (short, full)
    assert any(len(s) < len(f) for s, f in zip(short, full, strict=True)), (short, full)


def test_sharded_answers_merge_without_duplicates(setup):
    """A padding DistributedSampler repeats questions so every rank gets as many; merging drops the repeats."""
    model, tokenizer, transform, questions = setup
    questions = questions[:7]
    template, decoding = VicunaV1Template(), Decoding(max_new_tokens=6)
    dataset = QuestionDataset(questions, template, tokenizer, transform)
    module = EvalModule(model, tokenizer, template.stop_token_ids(tokenizer), decoding)
    pairs = []
    for rank in range(2):  # what each of two ranks computes
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=False)  # pads 7 -> 8
        loader = DataLoader(dataset, batch_size=3, sampler=sampler,
                            collate_fn=_Collate(tokenizer.pad_token_id, transform.image_size))
        pairs += [p for batch in loader for p in module.predict_step(batch, 0)]
    assert len(pairs) == 8 and len({u for u, _ in pairs}) == 7
    merged = merge_answers(pairs, len(questions))
    assert merged == generate_one_by_one(model, tokenizer, template, transform, questions, decoding)


def test_merge_refuses_gaps_and_conflicts():
    assert merge_answers([(1, "b"), (0, "a"), (1, "b")], 2) == ["a", "b"]
    with pytest.raises(RuntimeError, match="got no answer"):
        merge_answers([(0, "a")], 2)
    with pytest.raises(RuntimeError, match="answered twice, differently"):
        merge_answers([(0, "a"), (0, "b")], 1)


def test_a_blind_evaluation_shows_grey_in_place_of_every_image(setup):
    from PIL import Image

    from lmm.eval.inference import BLANK

    _, tokenizer, transform, questions = setup
    with_images = [q for q in questions if q.image is not None][:3]
    seeing = QuestionDataset(with_images, VicunaV1Template(), tokenizer, transform, sort_by_length=False)
    blind = QuestionDataset(with_images, VicunaV1Template(), tokenizer, transform, sort_by_length=False, blind=True)
    for i, q in enumerate(with_images):
        grey = transform(Image.new("RGB", q.load_image().size, BLANK))
        assert torch.equal(blind[i]["image"], grey) and not torch.equal(seeing[i]["image"], grey)
        assert blind[i]["input_ids"] == seeing[i]["input_ids"]  # the question is unchanged
