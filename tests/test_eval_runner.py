"""evaluate() end to end on the tiny world: answer files, results.json, W&B summary and table; load_checkpoint for
lmm model folders and exported Hugging Face Llava folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from lmm.eval.runner import evaluate, load_checkpoint
from lmm.export import export_hf_llava
from lmm.model.io import save_lmm_model
from tests.test_eval_benchmarks import suite_config
from tests.test_eval_inference import world_model

CPU = {"accelerator": "cpu", "devices": 1}
KEEP = ("tiny_gqa", "tiny_scienceqa", "tiny_mme", "tiny_mmvet")


def small_suite(cache: Path, *overrides: str):
    cfg = suite_config(cache, "tiny", overrides)
    with open_dict(cfg):
        cfg.eval.benchmarks = {k: cfg.eval.benchmarks[k] for k in KEEP}
    return cfg


@pytest.fixture(scope="module")
def saved(tiny_world, tmp_path_factory):
    """An lmm model folder (as the instruct stage writes it) and its Hugging Face Llava export."""
    world = tiny_world / "tiny-world"
    model, tokenizer, _ = world_model(world, seed=1)
    out = tmp_path_factory.mktemp("ckpt")
    config = OmegaConf.create({"model": {"encoder": {"pretrained": str(world / "clip-tiny-res224")}}})
    run = out / "runs" / "trained" / "instruct"
    save_lmm_model(model.state_dict(), model, run, tokenizer=tokenizer, config=config)
    hf = export_hf_llava(model, tokenizer, out / "hf", image_processor_source=str(world / "clip-tiny-res224"))
    return run.parent, hf


def test_evaluate_writes_answers_results_and_wandb(tiny_world, saved, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / var.lower()))
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    run_folder, _ = saved
    loaded = load_checkpoint(run_folder)
    assert loaded.model_id == "trained" and loaded.source == "lmm" and loaded.image_processor
    cfg = small_suite(tiny_world)
    logger = WandbLogger(project="lmm-test", save_dir=str(tmp_path), offline=True)
    run_dir = tmp_path / "run"
    try:
        results = evaluate(cfg, loaded.model, loaded.tokenizer, run_dir, loggers=[logger],
                           image_processor=loaded.image_processor, model_id=loaded.model_id, trainer_kwargs=CPU)
        summary = dict(logger.experiment.summary)
        files_dir = Path(logger.experiment.dir)
    finally:
        wandb.finish()
    assert list(results["benchmarks"]) == list(KEEP)
    for name in KEEP:
        entry = results["benchmarks"][name]
        questions = [json.loads(line) for line in
                     Path(entry["files"]["questions"]["path"]).read_text().splitlines()] \
            if name != "tiny_scienceqa" else json.loads(Path(entry["files"]["questions"]["path"]).read_text())
        answers = [json.loads(line) for line in (run_dir / "eval" / name / "answers.jsonl").read_text().splitlines()]
        ids = [q["question_id"] if "question_id" in q else q["id"] for q in questions]
        assert [a["question_id"] for a in answers] == ids  # question-file order, as eval_pope/MME scripts need
        assert all(a["model_id"] == "trained" and set(a) >= {"prompt", "text", "answer_id", "metadata"}
                   for a in answers)
        assert entry["files"]["questions"]["sha256"]
        assert entry["max_new_tokens"] == cfg.eval.benchmarks[name].max_new_tokens
        assert summary[f"eval/{name}"] == pytest.approx(entry["headline"])
    on_disk = json.loads((run_dir / "eval" / "results.json").read_text())
    assert on_disk["summary"] == results["summary"]
    protocol = on_disk["protocol"]
    assert protocol["template"] == "vicuna_v1" and protocol["image_aspect"] == "pad"
    assert protocol["decoding"]["do_sample"] is False and protocol["decoding"]["num_beams"] == 1
    assert on_disk["versions"]["torch"] == torch.__version__
    assert "USER: <image>\n" in on_disk["benchmarks"]["tiny_gqa"]["prompt_example"]
    assert "RuleJudge" in on_disk["benchmarks"]["tiny_mmvet"]["judge"]
    assert (run_dir / "eval" / "tiny_mme" / "mme_results" / "existence.txt").exists()
    assert (run_dir / "eval" / "tiny_gqa" / "testdev_balanced_predictions.json").exists()
    samples = [json.loads(line) for line in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {s["benchmark"] for s in samples} == set(KEEP)
    tables = list(files_dir.rglob("predictions*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["benchmark", "question_id", "image", "question", "answer", "reference", "score",
                                "correct"]
    assert len(table["data"]) == len(samples)
    with_image = [s for s in samples if s["image"] is not None]
    assert 0 < len(with_image) < len(samples)  # tiny_scienceqa has text-only questions
    assert len(list(files_dir.rglob("sample_images*.png"))) == len(with_image)  # also kept by offline runs


def test_hf_llava_folder_gives_the_same_answers(tiny_world, saved, tmp_path):
    run_folder, hf = saved
    cfg = small_suite(tiny_world)
    with open_dict(cfg):
        cfg.eval.benchmarks = {"tiny_gqa": cfg.eval.benchmarks.tiny_gqa}
    texts = {}
    for name, path in (("lmm", run_folder / "instruct" / "model"), ("hf", hf)):
        loaded = load_checkpoint(path)
        assert loaded.source == ("hf_llava" if name == "hf" else "lmm")
        evaluate(cfg, loaded.model, loaded.tokenizer, tmp_path / name, image_processor=loaded.image_processor,
                 trainer_kwargs=CPU)
        texts[name] = [json.loads(x)["text"] for x in
                       (tmp_path / name / "eval" / "tiny_gqa" / "answers.jsonl").read_text().splitlines()]
    assert texts["lmm"] == texts["hf"]


def test_load_checkpoint_refuses_other_folders(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="neither an lmm run/model folder"):
        load_checkpoint(tmp_path)


def test_missing_benchmark_files_fail_before_inference(tiny_world, saved, tmp_path):
    cfg = small_suite(tiny_world, "paths.data_root=/nonexistent")
    with open_dict(cfg):
        cfg.eval.benchmarks = {"gqa": suite_config(tiny_world, "ladder", ("paths.data_root=/nonexistent",))
                               .eval.benchmarks.gqa}
    loaded = load_checkpoint(saved[0])
    with pytest.raises(ValueError, match="question file not found: /nonexistent/eval/gqa"):
        evaluate(cfg, loaded.model, loaded.tokenizer, tmp_path, image_processor=loaded.image_processor,
                 trainer_kwargs=CPU)
    assert not os.path.exists(tmp_path / "eval" / "results.json")
