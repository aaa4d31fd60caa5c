"""Benchmark analogs: the tiny world written in the file formats of the twelve LLaVA-1.5 benchmarks.

LLaVA question files plus official annotation files, in LLaVA's playground/data/eval layout, so the real loaders and
scorers of lmm.eval run end to end (conf/eval/tiny.yaml). The prompts are lmm.data.formats', as in the real files.
"""

from __future__ import annotations

import base64
import io
import json
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from lmm.data.formats import MULTIPLE_CHOICE, SHORT_ANSWER, UNANSWERABLE, YES_NO_SUFFIX
from lmm.world.scenes import COLORS, NUMBER_WORDS, PLACES, SHAPES, Scene, caption, render, sample_scene, short_vqa

WORDS = ("STOP", "OPEN", "EXIT", "CAFE", "TAXI", "SALE", "BAR", "PARK")
COLORS_CN = {"red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "purple": "紫色", "orange": "橙色",
             "white": "白色", "black": "黑色"}
SHAPES_CN = {"circle": "圆形", "square": "正方形", "triangle": "三角形"}


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _json(path: Path, obj: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1), encoding="utf-8")


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def render_text(word: str, rng: random.Random) -> Image.Image:
    """A sign: a word in black on a light background (the TextVQA / MME-OCR analog)."""
    img = Image.new("RGB", (96, 48), COLORS[rng.choice(["white", "yellow", "orange"])])
    ImageDraw.Draw(img).text((8, 16), word, fill=COLORS["black"], font=ImageFont.load_default())
    return img


def _vqa_question(scene: Scene, rng: random.Random) -> tuple[str, str, str]:
    """(question, answer, answer type) in VQAv2's answer-type vocabulary."""
    q, a = short_vqa(scene, rng)[1:]
    kind = "yes/no" if a == "yes" else "number" if a.isdigit() else "other"
    return q, a, kind


def _human_answers(answer: str, kind: str, rng: random.Random) -> list[str]:
    """Ten human answers: mostly the answer, sometimes spelled differently or disagreeing (VQA accuracy's point)."""
    answers = [answer] * 10
    if kind == "number":
        answers[0] = NUMBER_WORDS[int(answer)]  # normalisation maps it back to the digit
    for k in rng.sample(range(1, 10), rng.choice([0, 1, 2, 3])):
        answers[k] = rng.choice({"yes/no": ["no"], "number": ["1", "2", "3"]}.get(kind, list(COLORS) + list(PLACES)))
    return answers


def _mcq(scene: Scene, rng: random.Random, n_options: int) -> tuple[str, list[str], int, str]:
    """(question, options, gold index, category) about one shape's colour or place."""
    shape, colour, place = rng.choice(scene.shapes)
    if rng.random() < 0.5:
        q, gold, pool, cat = f"What colour is the {shape}?", colour, list(COLORS), "attribute_recognition"
    else:
        q, gold, pool, cat = f"Where is the {shape}?", place, list(PLACES), "object_localization"
    options = [gold] + rng.sample([x for x in pool if x != gold], n_options - 1)
    rng.shuffle(options)
    return q, options, options.index(gold), cat


def build_benchmarks(root: Path, n: int, seed: int = 0) -> dict[str, Path]:
    """Write small analogs of the 12 LLaVA-1.5 benchmarks under `root` (= <data>/eval), n items each.

    A separate random stream keeps the rest of the world unchanged when this part changes.
    """
    rng = random.Random(seed + 7919)
    letters = "ABCDE"
    out: dict[str, Path] = {}

    def scene_image(path: Path) -> Scene:
        scene = sample_scene(rng)
        _save(render(scene), path)
        return scene

    # VQAv2 (val proxy): official questions + annotations JSON, COCO-style image names
    d = root / "vqav2"
    questions, anns = [], []
    for i in range(n):
        image_id = 100 + i
        scene = scene_image(d / "val2014" / f"COCO_val2014_{image_id:012d}.png")
        q, a, kind = _vqa_question(scene, rng)
        qid = image_id * 1000 + 1
        questions.append({"image_id": image_id, "question": q, "question_id": qid})
        anns.append({"question_id": qid, "image_id": image_id, "answer_type": kind, "question_type": " ".join(
            q.lower().split()[:2]), "multiple_choice_answer": a, "answers": [
            {"answer": x, "answer_confidence": "yes", "answer_id": k + 1}
            for k, x in enumerate(_human_answers(a, kind, rng))]})
    _json(d / "v2_OpenEnded_mscoco_val2014_questions.json", {"questions": questions})
    _json(d / "v2_mscoco_val2014_annotations.json", {"annotations": anns})
    out["vqav2"] = d

    # GQA testdev-balanced: LLaVA question file (string ids) + testdev_balanced_questions.json
    d = root / "gqa"
    rows, gt = [], {}
    for i in range(n):
        image = f"n{1000 + i}.png"
        scene = scene_image(d / "data" / "images" / image)
        q, a = short_vqa(scene, rng)[1:]
        qid = str(20000000 + i)
        rows.append({"question_id": qid, "image": image, "text": f"{q}\n{SHORT_ANSWER}", "category": "default"})
        gt[qid] = {"imageId": image[:-4], "question": q, "answer": a, "isBalanced": True}
    _jsonl(d / "llava_gqa_testdev_balanced.jsonl", rows)
    _json(d / "data" / "testdev_balanced_questions.json", gt)
    out["gqa"] = d

    # VizWiz val: LLaVA-style question file + the official val.json (some questions unanswerable)
    d = root / "vizwiz"
    rows, anns = [], []
    for i in range(n):
        image = f"VizWiz_val_{i:08d}.png"
        scene = scene_image(d / "val" / image)
        if rng.random() < 0.2:
            missing = next(s for s in SHAPES if s not in {x[0] for x in scene.shapes})
            q, a, kind, answerable = f"What colour is the {missing}?", "unanswerable", "unanswerable", 0
        else:
            (q, a, kind), answerable = _vqa_question(scene, rng), 1
        rows.append({"question_id": i, "image": image,
                     "text": f"{q}\n{UNANSWERABLE}\n{SHORT_ANSWER}"})
        anns.append({"image": image, "question": q, "answerable": answerable, "answer_type": kind,
                     "answers": [{"answer": x, "answer_confidence": "yes"} for x in _human_answers(a, kind, rng)]})
    _jsonl(d / "llava_val.jsonl", rows)
    _json(d / "val.json", anns)
    out["vizwiz"] = d

    # ScienceQA: llava_test_CQM-A.json (image and text-only items) + problems.json
    d = root / "scienceqa"
    records, problems = [], {}
    for i in range(n):
        pid = str(1000 + i)
        hint = rng.choice(["", "Look at the picture."])
        if i % 4 == 3:  # text-only: small sums
            x, y = rng.randint(0, 5), rng.randint(0, 4)
            question, gold = f"What is {NUMBER_WORDS[x]} plus {NUMBER_WORDS[y]}?", NUMBER_WORDS[x + y]
            choices = [gold] + rng.sample([w for w in NUMBER_WORDS if w != gold], rng.choice([1, 2, 3]))
            rng.shuffle(choices)
            image = None
        else:
            image = f"{pid}/image.png"
            scene = scene_image(d / "images" / "test" / image)
            question, choices, gold_index, _ = _mcq(scene, rng, rng.choice([2, 3, 4]))
            gold = choices[gold_index]
        value = (f"Context: {hint}\n" if hint else "") + question + "".join(
            f"\n{letters[k]}. {c}" for k, c in enumerate(choices))
        record = {"id": pid, "conversations": [
            {"from": "human", "value": ("<image>\n" + value) if image else value},
            {"from": "gpt", "value": letters[choices.index(gold)]}]}
        if image:
            record["image"] = image
        records.append(record)
        problems[pid] = {"question": question, "choices": choices, "answer": choices.index(gold), "hint": hint,
                         "image": "image.png" if image else None, "split": "test"}
    _json(d / "llava_test_CQM-A.json", records)
    _json(d / "problems.json", problems)
    out["scienceqa"] = d

    # TextVQA val: words on signs, OCR tokens in the prompt; question_id is the image id
    d = root / "textvqa"
    rows, data = [], []
    for i in range(n):
        image_id = f"{rng.getrandbits(64):016x}"
        word = rng.choice(WORDS)
        _save(render_text(word, rng), d / "train_images" / f"{image_id}.png")
        q = rng.choice(["What word is written on the sign?", "What does the sign say?"])
        ocr = [word] + rng.sample([w for w in WORDS if w != word], rng.choice([0, 1]))
        rows.append({"question_id": image_id, "image": f"{image_id}.png",
                     "text": f"{q}\nReference OCR token: {', '.join(ocr)}\n{SHORT_ANSWER}"})
        data.append({"image_id": image_id, "question": q, "question_id": i, "ocr_tokens": ocr,
                     "answers": [word.lower()] * 9 + [rng.choice([word.lower(), "sign"])]})
    _jsonl(d / "llava_textvqa_val_v051_ocr.jsonl", rows)
    _json(d / "TextVQA_0.5.1_val.json", {"dataset_name": "textvqa", "dataset_split": "val", "data": data})
    out["textvqa"] = d

    # POPE: one question file over three splits + per-split label files (paired by position)
    d = root / "pope"
    objects = [(c, s) for c in COLORS for s in SHAPES]
    images = []
    for i in range(max(2, n // 2)):
        image = f"COCO_val2014_{500 + i:012d}.png"
        images.append((image, scene_image(d / "val2014" / image)))
    popular = [(c, s) for c, s in objects if c in ("red", "blue", "green")]
    rows = []
    for split, base in (("adversarial", 1), ("popular", 20000001), ("random", 10000001)):
        labels = []
        for image, scene in images:
            present = {(c, s) for s, c, _ in scene.shapes}
            pos = rng.choice(sorted(present))
            absent = [o for o in objects if o not in present]
            if split == "adversarial":
                pool = [o for o in absent if o[1] in {s for _, s in present}] or absent
            elif split == "popular":
                pool = [o for o in popular if o not in present] or absent
            else:
                pool = absent
            neg = rng.choice(pool)
            pair = [(pos, "yes"), (neg, "no")]
            rng.shuffle(pair)
            for (colour, shape), label in pair:
                q = f"Is there a {colour} {shape} in the image?"
                qid = base + len(labels)
                labels.append({"question_id": len(labels) + 1, "image": image, "text": q, "label": label})
                rows.append({"question_id": qid, "image": image, "text": f"{q}\n{SHORT_ANSWER}", "category": split})
        _jsonl(d / "coco" / f"coco_pope_{split}.json", labels)
    _jsonl(d / "llava_pope_test.jsonl", rows)
    out["pope"] = d

    # MME: two questions per image (one yes, one no); GT files beside the images, or in images/ +
    # questions_answers_YN/ (both layouts of the official release)
    d = root / "MME"
    release = d / "MME_Benchmark_release_version"
    rows = []
    for category in ("existence", "count", "position", "color", "OCR", "numerical_calculation"):
        split_layout = category in ("color", "OCR")
        for i in range(max(2, n // 5)):
            stem = f"{i:04d}"
            img_rel = f"{category}/images/{stem}.png" if split_layout else f"{category}/{stem}.png"
            txt = release / category / ("questions_answers_YN" if split_layout else "") / f"{stem}.txt"
            if category in ("OCR", "numerical_calculation"):
                if category == "OCR":
                    word = rng.choice(WORDS)
                    other = rng.choice([w for w in WORDS if w != word])
                    yes_q, no_q = (f'Is the word in the image "{word}"?', f'Is the word in the image "{other}"?')
                else:
                    x, y = rng.randint(1, 4), rng.randint(1, 5)
                    word = f"{x}+{y}="
                    yes_q = f"Is the answer to the arithmetic question in the image {x + y}?"
                    no_q = f"Is the answer to the arithmetic question in the image {x + y + rng.randint(1, 3)}?"
                _save(render_text(word, rng), release / img_rel)
            else:
                scene = scene_image(release / img_rel)
                shape, colour, place = scene.shapes[0]
                others = [s for s in SHAPES if s not in {x[0] for x in scene.shapes}] or ["star"]
                if category == "existence":
                    yes_q, no_q = f"Is there a {shape} in this image?", f"Is there a {others[0]} in this image?"
                elif category == "count":
                    k = len(scene.shapes)
                    yes_q, no_q = f"Are there {NUMBER_WORDS[k]} shapes in the image?", \
                        f"Are there {NUMBER_WORDS[k + 1]} shapes in the image?"
                elif category == "position":
                    wrong = rng.choice([p for p in PLACES if p != place])
                    yes_q, no_q = f"Is the {shape} at the {place}?", f"Is the {shape} at the {wrong}?"
                else:
                    wrong = rng.choice([c for c in COLORS if c not in (colour, scene.background)])
                    yes_q, no_q = f"Is the {shape} {colour}?", f"Is the {shape} {wrong}?"
            pair = [(yes_q, "Yes"), (no_q, "No")]
            rng.shuffle(pair)
            txt.parent.mkdir(parents=True, exist_ok=True)
            # the official files are inconsistent: some put two spaces before "Please"
            sep = YES_NO_SUFFIX if i % 3 else " " + YES_NO_SUFFIX
            txt.write_text("".join(f"{q}{sep}\t{a}\n" for q, a in pair), encoding="utf-8")
            qid = f"{category}/{stem}.png"
            rows += [{"question_id": qid, "image": img_rel, "text": f"{q}\n{SHORT_ANSWER}", "category": category}
                     for q, _ in pair]
    _jsonl(d / "llava_mme.jsonl", rows)
    out["mme"] = d

    # MMBench and MMBench-CN dev: TSVs with base64 images and circularly rotated copies (index + k * 1e6)
    d = root / "mmbench"
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "source",
              "split", "comment", "image"]
    for lang in ("en", "cn"):
        tsv_rows = []
        for i in range(max(2, n // 2)):
            scene = sample_scene(rng)
            buf = io.BytesIO()
            render(scene).save(buf, format="PNG")
            b64 = base64.b64encode(buf.getvalue()).decode()
            q, options, gold, cat = _mcq(scene, rng, rng.choice([2, 3, 4, 4]))
            hint = rng.choice(["", "", "The image shows simple shapes."])
            if lang == "cn":
                shape = next(s for s in SHAPES if s in q)
                q = f"{SHAPES_CN[shape]}是什么颜色？" if "colour" in q else f"{SHAPES_CN[shape]}在哪里？"
                options = [COLORS_CN.get(o, o) for o in options]
                hint = "图中有简单的形状。" if hint else ""
            for k in range(len(options)):  # rotation k moves option j to position (j - k) mod n
                rot = options[k:] + options[:k]
                cells = {"index": str(i + k * 1_000_000), "question": q, "hint": hint or "nan",
                         "answer": letters[rot.index(options[gold])], "category": cat,
                         "l2-category": "perception", "source": "tiny-world", "split": "dev", "comment": "nan",
                         # the CN file uses VLMEvalKit's compact form: rotated rows refer to the base row's image
                         "image": b64 if (k == 0 or lang == "en") else str(i)}
                cells.update({letters[j]: (rot[j] if j < len(rot) else "nan") for j in range(4)})
                tsv_rows.append("\t".join(cells[c] for c in header))
        name = "mmbench_dev_20230712.tsv" if lang == "en" else "mmbench_dev_cn_20231003.tsv"
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text("\n".join(["\t".join(header), *tsv_rows]) + "\n", encoding="utf-8")
    out["mmbench"] = d

    # SEED-Bench: LLaVA question file + SEED-Bench.json (dimensions 1-9 images, 10 = a video's middle frame)
    d = root / "seed_bench"
    rows, sq = [], []
    for i in range(n):
        video = i % 5 == 4
        image = f"SEED-Bench-video-image/v{i:05d}.png" if video else f"SEED-Bench-image/{i:06d}.png"
        scene = scene_image(d / image)
        q, options, gold, _ = _mcq(scene, rng, 4)
        dim = 10 if video else (1 if "colour" in q else 8)
        qid = str(50000 + i)
        choices = "".join(f"\n{letters[k]}. {o}" for k, o in enumerate(options))
        rows.append({"question_id": qid, "image": image, "category": "image" if not video else "video",
                     "text": f"{q}{choices}\n{MULTIPLE_CHOICE}"})
        sq.append({"question_id": qid, "question": q, "answer": letters[gold], "question_type_id": dim,
                   "data_id": image, "data_type": "video" if video else "image",
                   **{f"choice_{letters[k].lower()}": o for k, o in enumerate(options)}})
    _jsonl(d / "llava-seed-bench.jsonl", rows)
    _json(d / "SEED-Bench.json", {"questions": sq, "question_type": {"Scene Understanding": 1,
                                                                     "Instance Location": 8, "Action Recognition": 10}})
    out["seed"] = d

    # LLaVA-Bench-in-the-Wild: conv / detail / complex questions, captions as context, reference answers
    d = root / "llava-bench-in-the-wild"
    rows, contexts, refs = [], [], []
    for i in range(max(2, n // 3)):
        image = f"{i:03d}.png"
        scene = scene_image(d / "images" / image)
        contexts.append({"id": i, "image": image, "caption": caption(scene)})
        shape, colour, place = scene.shapes[0]
        for category, q, a in (("conv", f"What colour is the {shape}?", f"The {shape} is {colour}."),
                               ("detail", "Describe the image in detail.", caption(scene)[0].upper()
                                + caption(scene)[1:] + "."),
                               ("complex", f"Where would you look to find the {shape}?",
                                f"The {shape} is at the {place} of the image.")):
            qid = len(rows)
            rows.append({"question_id": qid, "image": image, "text": q, "category": category})
            refs.append({"question_id": qid, "text": a, "category": category, "model_id": "gpt-4-0314"})
    _jsonl(d / "questions.jsonl", rows)
    _jsonl(d / "context.jsonl", contexts)
    _jsonl(d / "answers_gpt4.jsonl", refs)
    out["llava_bench"] = d

    # MM-Vet: open questions graded against answers with <AND>/<OR>
    d = root / "mm-vet"
    rows, gt = [], {}
    for i in range(n):
        image = f"v1_{i}.png"
        if i % 5 == 4:
            word = rng.choice(WORDS)
            _save(render_text(word, rng), d / "images" / image)
            q, a, caps = "What is written in the image?", word, ["ocr"]
        else:
            scene = scene_image(d / "images" / image)
            shape, colour, place = scene.shapes[0]
            q, a, caps = rng.choice([
                (f"What colour is the {shape}?", colour, ["rec"]),
                (f"Where is the {shape}?", place, ["rec", "spat"]),
                ("Which shapes are in the image?", "<AND>".join(s for s, _, _ in scene.shapes), ["rec"]),
                ("Name a colour you can see in the image.", "<OR>".join([c for _, c, _ in scene.shapes]
                                                                         + [scene.background]), ["rec", "know"]),
                ("How many shapes are there?", str(len(scene.shapes)), ["rec", "math"])])
        rows.append({"question_id": i, "image": image, "text": q})
        gt[f"v1_{i}"] = {"imagename": image, "capability": caps, "question": q, "answer": a}
    _jsonl(d / "llava-mm-vet.jsonl", rows)
    _json(d / "mm-vet.json", gt)
    out["mmvet"] = d
    return out
