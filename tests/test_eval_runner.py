"""evaluate() end to end on the tiny world: answer files, results.json, W&B summary and table; load_checkpoint for
lmm model folders and exported Hugging Face Llava folders."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict
from transformers import AutoImageProcessor

from lmm.eval.runner import RESULTS_VERSION, evaluate
from lmm.export import export_hf_llava
from lmm.model.connector import MLPConnector
from lmm.model.encoder import VisionEncoder
from lmm.model.io import load_checkpoint, save_lmm_model
from lmm.model.llava import LlavaModel
from lmm.model.llm import load_llm, load_tokenizer
from lmm.model.preprocess import CLIP_MEAN, ImageTransform
from tests.conftest import world_root
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
    world = world_root(tiny_world)
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
    logged = []
    log_artifact = logger.experiment.log_artifact
    monkeypatch.setattr(logger.experiment, "log_artifact", lambda a, **kw: (logged.append(a), log_artifact(a, **kw)))
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
    assert protocol["eval_dtype"] is None and protocol["dtype"] == "float32"  # no eval.dtype: as loaded
    assert protocol["dtypes"] == {"encoder": "float32", "connector": "float32", "llm": "float32"}
    assert protocol["decoding"]["do_sample"] is False and protocol["decoding"]["num_beams"] == 1
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["versions"]["results_version"] == RESULTS_VERSION and on_disk["versions"]["git_commit"]
    assert "USER: <image>\n" in on_disk["benchmarks"]["tiny_gqa"]["prompt_example"]
    mmvet = on_disk["benchmarks"]["tiny_mmvet"]
    assert mmvet["judge"] == "RuleJudge" and mmvet["judge_runs"] == 1 and mmvet["judge_temperature"] is None
    assert mmvet["judge_run_scores"] == [mmvet["scores"]]  # one (deterministic) run
    assert any(k.startswith("score_combo/") for k in mmvet["scores"])
    assert protocol["image_preprocessing"]["image_aspect_ratio"] == "pad"
    assert (run_dir / "eval" / "tiny_mme" / "mme_results" / "existence.txt").exists()
    assert (run_dir / "eval" / "tiny_gqa" / "testdev_balanced_predictions.json").exists()
    samples = [json.loads(line) for line in (run_dir / "eval" / "samples.jsonl").read_text().splitlines()]
    assert {s["benchmark"] for s in samples} == set(KEEP)
    # the per-question records travel with the W&B run (compare.py --wandb-project reads them for its intervals)
    (artifact,) = [a for a in logged if a.type == "evaluation"]
    entries = artifact.manifest.entries
    for name in KEEP:
        local = run_dir / "eval" / name / "per_question.jsonl"
        assert Path(entries[f"{name}/per_question.jsonl"].local_path).read_bytes() == local.read_bytes()
    assert "results.json" in entries
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


def _spy_on_generate(monkeypatch) -> list[dict[str, torch.dtype | None]]:
    """Record, at every LlavaModel.generate call, the dtypes of its parts' parameters, of the images and of RoPE."""
    seen: list[dict[str, torch.dtype | None]] = []
    original = LlavaModel.generate

    def generate(self, input_ids, attention_mask, images=None, **kwargs):
        seen.append({**{part: next(getattr(self, part).parameters()).dtype for part in ("encoder", "connector", "llm")},
                     "images": None if images is None else images.dtype,
                     "inv_freq": self.llm.model.rotary_emb.inv_freq.dtype})
        return original(self, input_ids, attention_mask, images, **kwargs)

    monkeypatch.setattr(LlavaModel, "generate", generate)
    return seen


def test_eval_dtype_is_loaded_used_while_generating_and_recorded(tiny_world, saved, tmp_path, monkeypatch):
    """eval.dtype=float16 (preset=paper) through the pipeline's eval stage: the checkpoint (fp32 weights) is loaded in
    fp16, every part generates in fp16 (the encoder too), results.json records the dtypes measured while generating,
    and RoPE's computed inv_freq stays fp32 as from_pretrained(dtype=float16) keeps it. fp16 runs on this CPU (slowly
    for big matrices, fine for the tiny model)."""
    import lmm.model.io as io
    from lmm.pipeline import eval_stage

    seen = _spy_on_generate(monkeypatch)
    asked: list[str | None] = []
    load = io.load_checkpoint
    monkeypatch.setattr(io, "load_checkpoint", lambda path, dtype=None: asked.append(dtype) or load(path, dtype))
    cfg = small_suite(tiny_world, "eval.dtype=float16", "logger=none")
    with open_dict(cfg):
        cfg.eval.benchmarks = {k: cfg.eval.benchmarks[k] for k in ("tiny_gqa", "tiny_scienceqa")}
        for bench in cfg.eval.benchmarks.values():
            bench.limit = 4
    results = eval_stage(cfg, tmp_path / "run", saved[0])
    half = torch.float16
    assert seen and all(s["encoder"] == s["connector"] == s["llm"] == half for s in seen)
    assert {s["images"] for s in seen} <= {half, None} and half in {s["images"] for s in seen}
    assert {s["inv_freq"] for s in seen} == {torch.float32}
    on_disk = json.loads((tmp_path / "run" / "eval" / "results.json").read_text())
    for protocol in (results["protocol"], on_disk["protocol"]):
        assert protocol["eval_dtype"] == "float16" and protocol["dtype"] == "float16"
        assert protocol["dtypes"] == {"encoder": "float16", "connector": "float16", "llm": "float16"}
        assert protocol["precision"] == "32-true"
    assert all(len(b["scores"]) for b in on_disk["benchmarks"].values())
    assert asked == ["float16"]  # loaded in fp16 (a 13B model never sits in host memory in fp32)


def test_recorded_dtype_is_the_one_generation_used(tiny_world, saved, tmp_path, monkeypatch):
    """A "bf16-true" predict precision converts the model inside the Trainer: results.json says bfloat16, what the
    parameters were while generating, not the float32 they were before."""
    seen = _spy_on_generate(monkeypatch)
    loaded = load_checkpoint(saved[0])
    cfg = small_suite(tiny_world)
    with open_dict(cfg):
        cfg.eval.benchmarks = {"tiny_gqa": cfg.eval.benchmarks.tiny_gqa}
        cfg.eval.benchmarks.tiny_gqa.limit = 2
    results = evaluate(cfg, loaded.model, loaded.tokenizer, tmp_path, image_processor=loaded.image_processor,
                       trainer_kwargs={**CPU, "precision": "bf16-true"})
    assert seen and {s["llm"] for s in seen} == {torch.bfloat16}
    assert results["protocol"]["dtypes"] == {"encoder": "bfloat16", "connector": "bfloat16", "llm": "bfloat16"}
    assert results["protocol"]["dtype"] == "bfloat16" and results["protocol"]["eval_dtype"] is None


def test_load_checkpoint_casts_every_part(saved):
    """Both checkpoint kinds: encoder, connector and LLM in the asked dtype; computed RoPE buffers stay fp32."""
    run_folder, hf = saved
    for path in (run_folder, hf):
        model = load_checkpoint(path, dtype="bfloat16").model
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert model.llm.model.rotary_emb.inv_freq.dtype == torch.float32
        assert {p.dtype for p in load_checkpoint(path).model.parameters()} == {torch.float32}


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


# ------------------------------------------------------------------------------- the checkpoint's preprocessing
def _bare_encoder(world: Path, tmp: Path, name: str = "clip-tiny-res336") -> Path:
    """A copy of a tiny-world tower without its preprocessor_config.json (like a hub id whose processor is not at
    hand: only config.json and the weights)."""
    bare = tmp / f"{name}-bare"
    shutil.copytree(world / name, bare)
    (bare / "preprocessor_config.json").unlink()
    return bare


def _model_on(encoder_dir: Path, world: Path) -> LlavaModel:
    encoder = VisionEncoder.from_pretrained(str(encoder_dir))
    llm = load_llm(str(world / "llama-tiny"))
    torch.manual_seed(3)
    return LlavaModel(encoder, MLPConnector(encoder.hidden_size, llm.config.hidden_size), llm, max_length=512).eval()


def test_saved_model_evaluates_with_its_own_resolution(tiny_world, tmp_path):
    """A 96px model saved from an encoder folder with no preprocessor config, evaluated under a config whose encoder
    is the 64px res224 tower: the model folder's own preprocessing is used."""
    world = world_root(tiny_world)
    bare = _bare_encoder(world, tmp_path)
    model = _model_on(bare, world)
    tokenizer = load_tokenizer(str(world / "llama-tiny"))
    config = OmegaConf.create({"model": {"encoder": {"pretrained": str(bare)}},
                               "stage": {"instruct": {"image_aspect": "pad"}}})
    with pytest.warns(UserWarning, match="no image processor config"):
        save_lmm_model(model.state_dict(), model, tmp_path / "runs" / "r96" / "instruct", tokenizer=tokenizer,
                       config=config)
    written = json.loads((tmp_path / "runs" / "r96" / "instruct" / "model" / "encoder" /
                          "preprocessor_config.json").read_text())
    assert written["crop_size"] == {"height": 96, "width": 96} and written["size"] == {"shortest_edge": 96}
    assert written["image_mean"] == pytest.approx(list(CLIP_MEAN)) and written["image_aspect_ratio"] == "pad"
    assert AutoImageProcessor.from_pretrained(tmp_path / "runs" / "r96" / "instruct" / "model" / "encoder")

    loaded = load_checkpoint(tmp_path / "runs" / "r96")
    assert loaded.image_processor.image_size == 96 and loaded.image_processor.aspect == "pad"
    cfg = small_suite(tiny_world)
    assert cfg.model.encoder.pretrained.endswith("clip-tiny-res224")  # the eval config says 64px
    with open_dict(cfg):
        cfg.eval.benchmarks = {"tiny_gqa": cfg.eval.benchmarks.tiny_gqa}
        cfg.eval.benchmarks.tiny_gqa.limit = 3
    results = evaluate(cfg, loaded.model, loaded.tokenizer, tmp_path / "ev", image_processor=loaded.image_processor,
                       trainer_kwargs=CPU)
    assert results["protocol"]["image_size"] == 96 and results["protocol"]["image_aspect"] == "pad"
    assert results["protocol"]["image_preprocessing"]["crop_size"] == {"height": 96, "width": 96}
    assert results["benchmarks"]["tiny_gqa"]["num_questions"] == 3
    # without image_processor: still the model's own (its encoder's folder), not the config's 64px encoder
    results = evaluate(cfg, loaded.model, loaded.tokenizer, tmp_path / "ev2", trainer_kwargs=CPU)
    assert results["protocol"]["image_size"] == 96 and results["protocol"]["image_preprocessing"] == \
        loaded.image_processor.processor_config()
    with pytest.raises(ValueError, match="clip-tiny-res224 crops images to 64px, but the encoder it belongs to takes "
                                         "96px"):  # the config's encoder, passed on purpose
        evaluate(cfg, loaded.model, loaded.tokenizer, tmp_path / "ev3", trainer_kwargs=CPU,
                 image_processor=cfg.model.encoder.pretrained)
    with pytest.raises(ValueError, match="makes 64px images, but the model's encoder takes 96px"):
        evaluate(cfg, loaded.model, loaded.tokenizer, tmp_path / "ev4", trainer_kwargs=CPU,
                 image_processor=ImageTransform(64))


def test_saved_preprocessing_comes_from_the_hub_processor_and_the_stage(tiny_world, tmp_path, monkeypatch):
    """A hub id (as openai/clip-vit-large-patch14-336 in the paper preset) is resolved like training resolved it;
    the instruct stage's pad/crop is recorded and load_checkpoint uses it; eval.image_aspect overrides it."""
    from transformers.image_processing_base import ImageProcessingMixin

    from lmm.eval.runner import _image_transform

    world = world_root(tiny_world)
    model = _model_on(world / "clip-tiny-res336", world)
    hub = {"size": {"shortest_edge": 104}, "crop_size": {"height": 96, "width": 96}, "do_center_crop": True,
           "image_mean": [0.1, 0.2, 0.3], "image_std": [0.4, 0.5, 0.6], "resample": 2}

    def fake_hub(path, **kwargs):
        if str(path) != "org/clip-custom-336":
            raise OSError(f"offline: {path}")
        return dict(hub), {}

    monkeypatch.setattr(ImageProcessingMixin, "get_image_processor_dict", staticmethod(fake_hub))
    config = OmegaConf.create({"model": {"encoder": {"pretrained": "org/clip-custom-336"}},
                               "stage": {"instruct": {"image_aspect": "crop"}}})
    save_lmm_model(model.state_dict(), model, tmp_path / "stage", config=config,
                   tokenizer=load_tokenizer(str(world / "llama-tiny")))
    loaded = load_checkpoint(tmp_path / "stage")
    t = loaded.image_processor
    assert (t.image_size, t.resize_size, t.mean, t.std, int(t.resample), t.aspect) == \
        (96, 104, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), 2, "crop")
    cfg = OmegaConf.create({"eval": {"image_aspect": None}})
    assert _image_transform(cfg, loaded.model, t)[0].aspect == "crop"
    cfg.eval.image_aspect = "pad"
    assert _image_transform(cfg, loaded.model, t)[0].aspect == "pad"


def test_preprocessing_that_disagrees_with_the_encoder_is_refused(tiny_world, tmp_path):
    world = world_root(tiny_world)
    model = _model_on(world / "clip-tiny-res336", world)
    wrong = OmegaConf.create({"model": {"encoder": {"pretrained": str(world / "clip-tiny-res224")}}})
    with pytest.raises(ValueError, match="clip-tiny-res224 crops images to 64px, but the encoder it belongs to "
                                         "takes 96px"):
        save_lmm_model(model.state_dict(), model, tmp_path / "bad", config=wrong)
    assert not (tmp_path / "bad").exists()  # refused before anything was written
    right = OmegaConf.create({"model": {"encoder": {"pretrained": str(world / "clip-tiny-res336")}}})
    save_lmm_model(model.state_dict(), model, tmp_path / "ok", config=right,
                   tokenizer=load_tokenizer(str(world / "llama-tiny")))
    file = tmp_path / "ok" / "model" / "encoder" / "preprocessor_config.json"
    settings = json.loads(file.read_text())
    settings["crop_size"] = {"height": 64, "width": 64}
    file.write_text(json.dumps(settings))
    with pytest.raises(ValueError, match=r"ok/model/encoder crops images to 64px, but the encoder it belongs to "
                                         "takes 96px"):
        load_checkpoint(tmp_path / "ok")


# ------------------------------------------------------------------------------------ Lightning checkpoint paths
def test_lightning_checkpoint_maps_to_the_stage_model(saved, tmp_path):
    run = saved[0]
    ckpt = run / "instruct" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    ckpt.write_bytes(b"lightning")
    loaded = load_checkpoint(ckpt)
    assert loaded.source == "lmm" and loaded.model_id == "trained"
    assert load_checkpoint(ckpt.parent).model_id == "trained"  # the checkpoints folder itself
    # a sharded (FSDP) last.ckpt is a folder
    sharded = tmp_path / "runs" / "fsdp"
    shutil.copytree(run / "instruct" / "model", sharded / "instruct" / "model")
    (sharded / "instruct" / "checkpoints" / "last.ckpt").mkdir(parents=True)
    assert load_checkpoint(sharded / "instruct" / "checkpoints" / "last.ckpt").model_id == "fsdp"


def test_lightning_checkpoints_without_a_model_say_what_to_pass(tmp_path):
    run = tmp_path / "runs" / "r1"
    align = tmp_path / "stages" / "align-abc"
    (align / "checkpoints").mkdir(parents=True)
    (align / "checkpoints" / "last.ckpt").write_bytes(b"x")
    (align / "stage.json").write_text(json.dumps({"stage": "align"}))
    run.mkdir(parents=True)
    (run / "align").symlink_to(align, target_is_directory=True)
    with pytest.raises(ValueError, match=rf"align-stage checkpoint.*checkpoint={run}/instruct/model"):
        load_checkpoint(run / "align" / "checkpoints" / "last.ckpt")
    (run / "instruct" / "checkpoints").mkdir(parents=True)
    (run / "instruct" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match=rf"no model/ folder yet.*checkpoint={run}/instruct/model"):
        load_checkpoint(run / "instruct" / "checkpoints" / "last.ckpt")
    (tmp_path / "loose.ckpt").write_bytes(b"x")
    with pytest.raises(ValueError, match="outside an lmm run"):
        load_checkpoint(tmp_path / "loose.ckpt")
