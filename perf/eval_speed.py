"""Questions/s of lmm's batched evaluation against one-at-a-time generation on the same tiny model and questions.

Compared, on the tiny world's GQA analog (short answers) and MM-Vet analog (longer answers):
  hf-llava-1by1   the model exported with lmm.export.export_hf_llava, LlavaForConditionalGeneration.generate one
                  question at a time (LLaVA's protocol: batch size 1)
  lmm-1by1        LlavaModel.generate one question at a time (HF generate on the LLM with inputs_embeds)
  lmm-batched-B   lmm.eval's Lightning predict loop, B questions per batch (left padding, KV cache)
and whether every path gives the same answers. Results go to experiments/eval_speed.md by hand.

Usage: python perf/eval_speed.py [--checkpoint <lmm run or model folder>] [--cache DIR] [--threads N]
Without --checkpoint the tiny world's backbones with a random connector are used (untrained answers vary more,
which makes the agreement check stricter).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lmm.constants import IMAGE_TOKEN_INDEX  # noqa: E402
from lmm.data.templates import VicunaV1Template  # noqa: E402
from lmm.eval.inference import (  # noqa: E402
    Decoding,
    EvalModule,
    QuestionDataset,
    generate_one_by_one,
    make_loader,
    predict_answers,
)
from lmm.eval.tasks import GQA, MMVet, Question  # noqa: E402
from lmm.model.preprocess import ImageTransform  # noqa: E402


def load_model(args: argparse.Namespace, world: Path):
    if args.checkpoint:
        from lmm.model.io import load_checkpoint

        loaded = load_checkpoint(args.checkpoint)
        return loaded.model.eval(), loaded.tokenizer, loaded.image_processor  # the checkpoint's preprocessing
    from lmm.model.connector import MLPConnector
    from lmm.model.encoder import VisionEncoder
    from lmm.model.llava import LlavaModel
    from lmm.model.llm import load_llm, load_tokenizer

    encoder = VisionEncoder.from_pretrained(str(world / "clip-tiny-res224"))
    llm = load_llm(str(world / "llama-tiny"))
    torch.manual_seed(0)
    model = LlavaModel(encoder, MLPConnector(encoder.hidden_size, llm.config.hidden_size), llm, max_length=512)
    return model.eval(), load_tokenizer(str(world / "llama-tiny")), ImageTransform.from_pretrained(
        str(world / "clip-tiny-res224"), aspect="pad")


def hf_one_by_one(hf, image_token_id: int, n_visual: int, tokenizer, template, transform,
                  questions: list[Question], decoding: Decoding) -> list[str]:
    """Exported HF Llava, batch size 1: the placeholder expanded to the image tokens HF expects."""
    texts = []
    for q in questions:
        ids = []
        for i in template.prompt_ids(q.text, tokenizer, has_image=True):
            ids += [image_token_id] * n_visual if i == IMAGE_TOKEN_INDEX else [i]
        ids_t = torch.tensor([ids])
        with torch.no_grad():
            out = hf.generate(input_ids=ids_t, attention_mask=torch.ones_like(ids_t),
                              pixel_values=transform(q.load_image())[None], eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id, **decoding.kwargs())
        texts.append(tokenizer.decode(out[0, ids_t.shape[1]:], skip_special_tokens=True).strip())
    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "lmm-eval-speed"))
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats per path (the best is reported)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    import lightning as L
    from transformers import LlavaForConditionalGeneration
    from transformers.utils import logging as hf_logging

    from lmm.export import export_hf_llava
    from lmm.world.build import configured_world

    hf_logging.set_verbosity_error()
    world = configured_world(Path(args.cache))
    bench_dir = world / "data" / "eval"
    model, tokenizer, transform = load_model(args, world)
    template = VicunaV1Template()
    suites = {
        "gqa-analog (max_new_tokens 8)": GQA(
            bench_dir / "gqa" / "llava_gqa_testdev_balanced.jsonl",
            bench_dir / "gqa" / "data" / "testdev_balanced_questions.json", bench_dir / "gqa" / "data" / "images",
            max_new_tokens=8),
        "mmvet-analog (max_new_tokens 48)": MMVet(
            bench_dir / "mm-vet" / "llava-mm-vet.jsonl", bench_dir / "mm-vet" / "mm-vet.json",
            bench_dir / "mm-vet" / "images", max_new_tokens=48)}
    hf_dir = Path(tempfile.mkdtemp(prefix="lmm-eval-speed-hf-"))
    export_hf_llava(model, tokenizer, hf_dir, image_processor_source=transform)
    hf = LlavaForConditionalGeneration.from_pretrained(hf_dir).eval()
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, model: "
          f"{args.checkpoint or 'tiny-world backbones + random connector'}, "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {model.num_visual_tokens} visual tokens")
    print("| questions | path | questions/s | speed-up vs hf-llava-1by1 | same answers as hf-llava-1by1 |")
    print("|---|---|---|---|---|")
    for label, bench in suites.items():
        qs = bench.questions()
        decoding = Decoding(max_new_tokens=bench.max_new_tokens)
        n = len(qs)

        def timed(fn, n=n):
            best, out = float("inf"), None
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                out = fn()
                best = min(best, time.perf_counter() - t0)
            return out, n / best

        paths = {"hf-llava-1by1": lambda qs=qs, decoding=decoding: hf_one_by_one(
                     hf, hf.config.image_token_index, model.num_visual_tokens, tokenizer, template, transform, qs,
                     decoding),
                 "lmm-1by1": lambda qs=qs, decoding=decoding: generate_one_by_one(
                     model, tokenizer, template, transform, qs, decoding)}
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            def batched(bs=bs, qs=qs, decoding=decoding):
                dataset = QuestionDataset(qs, template, tokenizer, transform)
                module = EvalModule(model, tokenizer, template.stop_token_ids(tokenizer), decoding)
                return predict_answers(trainer, module, make_loader(dataset, tokenizer, bs), len(qs))
            paths[f"lmm-batched-{bs}"] = batched
        reference, base_rate = None, None
        for name, fn in paths.items():
            texts, rate = timed(fn)
            if reference is None:
                reference, base_rate = texts, rate
            same = sum(a == b for a, b in zip(texts, reference, strict=True))
            print(f"| {label}, n={len(qs)} | {name} | {rate:.1f} | {rate / base_rate:.2f}x | {same}/{len(qs)} |",
                  flush=True)


if __name__ == "__main__":
    main()
