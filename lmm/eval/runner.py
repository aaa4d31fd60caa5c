"""Evaluation entry point: answer a suite of benchmarks with a model, score, and record everything.

`evaluate(cfg, model, tokenizer, run_dir, ...)` is what the pipeline calls (after the instruct stage, or for
task=eval, with the model of `checkpoint=` read by lmm.model.io.load_checkpoint). The image preprocessing (size,
mean, std, pad/crop) is the model's own, by its encoder's rule (VisionEncoder.image_transform: a checkpoint's is the
one it records), never the current config's encoder; `eval.image_aspect` only overrides pad/crop on purpose.

Per benchmark the run folder gets eval/<name>/answers.jsonl (LLaVA format, question-file order, so LLaVA's scripts
re-score it), the official upload/eval files, scores.json and per_question.jsonl (each question's score and what
lmm.compare needs to resample the headline); eval/results.json holds every score together with the
prompts, decoding settings, file hashes and versions (lmm.provenance) that produced it; W&B gets the scores in the
run summary and a table of sample predictions.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger, WandbLogger
from omegaconf import DictConfig
from PIL import Image, ImageOps

from lmm.eval.files import PER_QUESTION_FILE, sha256, write_per_question
from lmm.eval.inference import (
    Decoding,
    EvalModule,
    QuestionDataset,
    broadcast_from_rank0,
    make_loader,
    predict_answers,
    prompt_text,
)
from lmm.eval.tasks import Benchmark, Question
from lmm.log import log
from lmm.model.build import cast_model, part_dtypes
from lmm.model.llava import LlavaModel
from lmm.model.preprocess import ImageTransform
from lmm.model.tiles import TiledTransform
from lmm.provenance import provenance

THUMBNAIL = 256  # side of the letterboxed sample images logged to W&B
RESULTS_VERSION = 2  # bump when the layout of eval/results.json changes (2: versions from lmm.provenance)


def _rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))


def _image_transform(cfg: DictConfig, model: LlavaModel,
                     image_processor: str | os.PathLike | ImageTransform | None) -> tuple[ImageTransform, str]:
    """(preprocessing, where it came from): `image_processor` when given (an ImageTransform, or a folder, file or hub
    id read by the encoder's rule), else the model's own (VisionEncoder.image_transform: what a checkpoint records),
    never the config's encoder; `eval.image_aspect` overrides pad/crop. Refuses a resolution the model's encoder does
    not take."""
    aspect = cfg.eval.get("image_aspect")
    if isinstance(image_processor, ImageTransform):
        transform, source = image_processor, "checkpoint"
    else:
        transform = model.encoder.image_transform(aspect, source=image_processor)
        source = image_processor if image_processor is not None else \
            model.encoder.source or f"{model.encoder.config.model_type} defaults"
    if aspect:
        transform = transform.with_aspect(str(aspect))
    if transform.image_size != model.encoder.image_size:
        raise ValueError(f"the image preprocessing ({source}) makes {transform.image_size}px images, but the model's "
                         f"encoder takes {model.encoder.image_size}px: evaluate with the checkpoint's own "
                         "preprocessing (lmm.model.io.load_checkpoint(...).image_processor)")
    if model.tiled and not isinstance(transform, TiledTransform):  # input=hd/anyres: the same pixels, as tiles
        transform = TiledTransform(transform, model.connector.spec,
                                   model.encoder.image_size // model.encoder.config.patch_size)
    return transform, str(source)


# ------------------------------------------------------------------------------------------------------ helpers
def build_benchmarks(ecfg: DictConfig) -> list[Benchmark]:
    """Instantiate the suite's benchmarks, named by their key in `eval.benchmarks`, in config order."""
    out = []
    for name, spec in (ecfg.get("benchmarks") or {}).items():
        if spec is None:  # a suite entry switched off with `eval.benchmarks.<name>=null`
            continue
        out.append(instantiate(spec, name=str(name)))
    return out


def _eval_trainer(cfg: DictConfig, overrides: dict[str, Any] | None) -> L.Trainer:
    """A Trainer for predict only: the run's devices, plain data parallel (FSDP is a training-time concern)."""
    tcfg = cfg.get("trainer") or {}
    ecfg = cfg.eval
    kwargs: dict[str, Any] = {"accelerator": tcfg.get("accelerator", "auto"), "devices": tcfg.get("devices", 1),
                              "num_nodes": tcfg.get("num_nodes", 1), "strategy": ecfg.get("strategy", "auto"),
                              "precision": ecfg.get("precision", "32-true"), "logger": False,
                              "enable_checkpointing": False, "enable_model_summary": False,
                              "enable_progress_bar": bool(ecfg.get("progress_bar", False))}
    kwargs.update(overrides or {})
    return L.Trainer(**kwargs)


def _file_hashes(bench: Benchmark) -> dict[str, Any]:
    out = {}
    for key, path in bench.files().items():
        if path and Path(path).exists():
            p = Path(path)
            out[key] = {"path": str(p), "sha256": sha256(p) if p.is_file() else "dir (not hashed)"}
    return out


def _table_rows(bench: Benchmark, qs: list[Question], texts: list[str], per: list[float | None],
                n: int) -> list[dict[str, Any]]:
    """n questions spread evenly over the benchmark, as rows of the sample-predictions table."""
    if n <= 0 or not qs:
        return []
    picks = sorted({round(i * (len(qs) - 1) / max(1, n - 1)) for i in range(min(n, len(qs)))})
    rows = []
    for i in picks:
        q, score = qs[i], per[i]
        image = None if q.image is None else str(q.image) if isinstance(q.image, Path) else "<embedded in " + \
            q.where + ">"
        rows.append({"benchmark": bench.name, "question_id": str(q.question_id), "uid": q.uid, "image": image,
                     "question": q.text,
                     "answer": texts[i], "reference": bench.reference_text(q), "score": score,
                     "correct": None if score is None else bool(score >= 0.999)})
    return rows


def _log_wandb(loggers: list[Logger], summary: dict[str, float], rows: list[dict[str, Any]],
               by_name: dict[str, Benchmark], out_dir: Path) -> None:
    """Scores into the run summary, sample predictions (with images) as a wandb.Table, and the eval folder's
    results and per-question records as an artifact: what `compare.py --wandb-project` needs for its intervals."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger):
            continue
        import wandb

        run = logger.experiment
        run.summary.update(summary)
        columns = ["benchmark", "question_id", "image", "question", "answer", "reference", "score", "correct"]
        data, images = [], []
        for r in rows:
            q = by_name[r["benchmark"]].questions()[r["uid"]]
            img = q.load_image()
            data.append([r["benchmark"], r["question_id"], wandb.Image(img) if img is not None else None,
                         r["question"], r["answer"], r["reference"], r["score"], r["correct"]])
            if img is not None:
                mark = "" if r["correct"] is None else (" ✓" if r["correct"] else " ✗")
                # one size for the whole list (W&B shows a media list at its first image's size): letterboxed
                thumb = ImageOps.pad(img.convert("RGB"), (THUMBNAIL, THUMBNAIL), color=(255, 255, 255))
                images.append(wandb.Image(thumb, caption=f"{r['benchmark']} {r['question_id']}: {r['answer']}{mark}"))
        # Offline runs drop the images inside a table (wandb/wandb#4611): the same images are also logged as a plain
        # media list, which offline runs keep and `wandb sync` uploads.
        run.log({"eval/predictions": wandb.Table(columns=columns, data=data), "eval/sample_images": images})
        artifact = wandb.Artifact(f"eval-{run.id}", type="evaluation", metadata={"benchmarks": list(by_name)})
        artifact.add_file(str(out_dir / "results.json"), name="results.json")
        for name in by_name:
            for file in (PER_QUESTION_FILE, "scores.json"):
                if (out_dir / name / file).is_file():
                    artifact.add_file(str(out_dir / name / file), name=f"{name}/{file}")
        run.log_artifact(artifact, aliases=["eval", "latest"])


# ----------------------------------------------------------------------------------------------------- evaluate
def evaluate(cfg: DictConfig, model: LlavaModel, tokenizer: Any, run_dir: str | os.PathLike,
             loggers: list[Logger] | None = None, image_processor: str | os.PathLike | ImageTransform | None = None,
             model_id: str | None = None, trainer_kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Answer and score the suite `cfg.eval` with `model`; write answer files and eval/results.json under run_dir.

    `image_processor` is the model's preprocessing: an ImageTransform (lmm.model.io.load_checkpoint(...)
    .image_processor) or a folder/file/hub id with its preprocessor_config.json; None: the model's own, by its
    encoder's rule (model.encoder.image_transform()). `trainer_kwargs` override the predict Trainer's arguments.
    Returns what results.json holds (on every rank).
    """
    threads = torch.get_num_threads()
    if cfg.eval.get("num_threads"):
        torch.set_num_threads(int(cfg.eval.num_threads))
    try:
        return _evaluate(cfg, model, tokenizer, Path(run_dir), loggers, image_processor, model_id, trainer_kwargs)
    finally:
        torch.set_num_threads(threads)


def _evaluate(cfg: DictConfig, model: LlavaModel, tokenizer: Any, run_dir: Path, loggers: list[Logger] | None,
              image_processor: str | os.PathLike | ImageTransform | None, model_id: str | None,
              trainer_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    ecfg = cfg.eval
    out_dir = run_dir / "eval"
    model_id = model_id or ecfg.get("model_id") or run_dir.name
    transform, processor = _image_transform(cfg, model, image_processor)
    template = instantiate(ecfg.template)
    if ecfg.get("dtype"):
        cast_model(model, ecfg.dtype)
    benchmarks = build_benchmarks(ecfg)
    for bench in benchmarks:  # read and check every file before the first (possibly hours-long) inference
        bench.questions()
    trainer = _eval_trainer(cfg, trainer_kwargs)
    if ecfg.get("dtype") == "float16" and trainer.accelerator.__class__.__name__ == "CPUAccelerator":
        log.warning("eval.dtype=float16 on a CPU: most CPUs multiply fp16 hundreds of times slower than bf16 "
                    "(bfloat16)")
    results: dict[str, Any] = {
        "suite": ecfg.get("name"), "model_id": model_id,
        "protocol": {"template": getattr(template, "name", type(template).__name__),
                     "system": getattr(template, "system", None), "image_aspect": transform.aspect,
                     "image_size": transform.image_size, "image_processor": processor,
                     "image_preprocessing": transform.processor_config(),
                     "decoding": {"do_sample": False, "temperature": 0, "num_beams": 1, "use_cache": True,
                                  "stop_token_ids": template.stop_token_ids(tokenizer)},
                     "batch_size": int(ecfg.batch_size), "padding": "left (after splicing)",
                     "dtype": part_dtypes(model)["llm"], "dtypes": part_dtypes(model),  # measured again below
                     "eval_dtype": ecfg.get("dtype"), "precision": str(trainer.precision),
                     "world_size": trainer.world_size, "blind": bool(ecfg.get("blind", False))},
        "model": {"visual_tokens_per_image": model.num_visual_tokens,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "versions": {**provenance(), "results_version": RESULTS_VERSION}, "benchmarks": {}, "summary": {}}
    rows: list[dict[str, Any]] = []
    total_q, total_s = 0, 0.0
    visual = [0, 0]  # tiled input: visual tokens and images over all benchmarks
    for bench in benchmarks:
        qs = bench.questions()
        dataset = QuestionDataset(qs, template, tokenizer, transform, blind=bool(ecfg.get("blind", False)))
        loader = make_loader(dataset, tokenizer, int(ecfg.batch_size), int(ecfg.get("num_workers", 0)))
        decoding = Decoding(max_new_tokens=bench.max_new_tokens)
        module = EvalModule(model, tokenizer, template.stop_token_ids(tokenizer), decoding)
        started = time.perf_counter()
        texts = predict_answers(trainer, module, loader, len(qs))
        seconds = time.perf_counter() - started
        if module.dtypes:  # the parameters' dtypes while generating, not just what was asked for
            results["protocol"].update(dtypes=module.dtypes, dtype=module.dtypes["llm"])
        total_q, total_s = total_q + len(qs), total_s + seconds
        entry: dict[str, Any] = {}
        if _rank() == 0:
            entry = _finish_benchmark(bench, qs, texts, dataset, tokenizer, model_id, out_dir / bench.name, seconds)
            if model.tiled:  # input=hd/anyres: the count varies per image; record what this benchmark's images got
                counts = [model.visual_tokens(_image_size(q)) for q in qs if q.image is not None]
                entry["visual_tokens_per_image"] = round(sum(counts) / len(counts), 1) if counts else None
                visual = [visual[0] + sum(counts), visual[1] + len(counts)]
            rows += _table_rows(bench, qs, texts, entry.pop("_per_question"), int(ecfg.get("num_table_rows", 8)))
            results["benchmarks"][bench.name] = entry
            results["summary"].update(entry["summary"])
            shown = f"{entry['headline']:.2f}" if entry["headline"] is not None else "no ground truth"
            log.info(f"eval {bench.name}: {len(qs)} questions in {seconds:.1f}s ({len(qs) / seconds:.1f}/s), "
                 f"{bench.headline_key} = {shown}")
    if _rank() == 0:
        if model.tiled:
            results["model"]["visual_tokens_per_image"] = round(visual[0] / visual[1], 1) if visual[1] else None
        results["throughput"] = {"questions": total_q, "seconds": round(total_s, 2),
                                 "questions_per_sec": round(total_q / total_s, 2) if total_s else None}
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / "samples.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
        (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False))
        _log_wandb(list(loggers or []), results["summary"], rows, {b.name: b for b in benchmarks}, out_dir)
        log.info(f"eval results: {out_dir / 'results.json'}")
    return broadcast_from_rank0(results)  # scored once, on rank 0: judges may be remote and paid


def _image_size(q: Question) -> tuple[int, int]:
    """(height, width) of a question's image; a file's header is enough."""
    if isinstance(q.image, Path):
        with Image.open(q.image) as img:
            return img.height, img.width
    img = q.load_image()
    return img.height, img.width


def _finish_benchmark(bench: Benchmark, qs: list[Question], texts: list[str], dataset: QuestionDataset,
                      tokenizer: Any, model_id: str, out_dir: Path, seconds: float) -> dict[str, Any]:
    """Write the answer and upload files of one benchmark, score it, and describe how it was run."""
    out_dir.mkdir(parents=True, exist_ok=True)
    answers = out_dir / "answers.jsonl"
    with open(answers, "w", encoding="utf-8") as f:
        for q, t in zip(qs, texts, strict=True):
            f.write(json.dumps(bench.answer_record(q, t, model_id), ensure_ascii=False) + "\n")
    extra = bench.write_submission(out_dir, qs, texts)
    scored = bench.score(qs, texts)
    per_question = write_per_question(out_dir / PER_QUESTION_FILE, bench, qs, texts, scored.per_question)
    headline = bench.headline(scored.scores) if scored.scores else None
    summary = {f"eval/{bench.name}/{k}": v for k, v in scored.scores.items()}
    if headline is not None:
        summary[f"eval/{bench.name}"] = headline
    example = dataset.prompts[0] if dataset.prompts else []
    entry = {**bench.describe(), "num_questions": len(qs),
             "num_scored": sum(q.reference is not None for q in qs), "scores": scored.scores, "headline": headline,
             "summary": summary, "seconds": round(seconds, 2),
             "questions_per_sec": round(len(qs) / seconds, 2) if seconds else None,
             "prompt_example": prompt_text(example, tokenizer) if example else None,
             "files": _file_hashes(bench), "answers_file": str(answers), "per_question_file": str(per_question),
             "submission_files": [str(p) for p in extra], **scored.details, "_per_question": scored.per_question}
    (out_dir / "scores.json").write_text(json.dumps({k: v for k, v in entry.items() if k != "_per_question"},
                                                    indent=2, ensure_ascii=False))
    return entry
