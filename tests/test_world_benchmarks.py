"""The tiny world's benchmark analogs (lmm.world.benchmarks) through lmm's real loaders and scorers: the ground truth
scores full marks and wrong answers the expected low scores; POPE / MME / RefCOCO / VizWiz agree with the scenes they
were drawn from; knowledge items ask held-out facts only; the files are a pure function of the seed and of each
analog's own size."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from lmm.eval.runner import build_benchmarks as load_suite
from lmm.eval.scoring.grounding import box_iou
from lmm.world.benchmarks import DEFAULT_SIZES, build_benchmarks
from lmm.world.benchmarks.yesno import LOOKALIKE
from lmm.world.knowledge import FACTS, split_facts
from lmm.world.questions import referring_expression
from lmm.world.scenes import Scene
from tests.test_config import cfg_of

ROOT = Path(__file__).resolve().parents[1]
SIZES = {"vqav2": 16, "gqa": 24, "vizwiz": 10, "scienceqa": 8, "textvqa": 10, "pope": 36, "mme": 240, "mmbench": 8,
         "mmbench_cn": 6, "seed": 10, "llava_bench": 6, "mmvet": 40, "refcoco": 16}
SEED = 3
TRAIN_FACTS, HELD_FACTS = split_facts(SEED)
FACT_OF_VALUE = {v: (k, p) for k, props in FACTS.items() for p, v in props.items()}  # the 30 values are distinct
MODULES = ("short", "yesno", "choice", "open", "grounding")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> tuple[Path, dict, dict[str, Scene]]:
    """The analogs built small into a temporary folder, with every scene each saved image shows."""
    root = tmp_path_factory.mktemp("eval")
    scenes: dict[str, Scene] = {}
    mp = pytest.MonkeyPatch()
    for name in MODULES:
        module = sys.modules[f"lmm.world.benchmarks.{name}"]
        original = module.save_scene

        def record(scene: Scene, path: Path, original=original) -> None:
            scenes[str(Path(path).relative_to(root))] = scene
            original(scene, path)

        mp.setattr(module, "save_scene", record)
    try:
        report = build_benchmarks(root, SIZES, SEED, HELD_FACTS, progress=False)
    finally:
        mp.undo()
    return root, report, scenes


@pytest.fixture(scope="module")
def benches(world):
    """The tiny suite (conf/eval/tiny.yaml) instantiated on the built folder, keyed by kind (mmbench_cn apart)."""
    cfg = cfg_of("eval=tiny", f"world.eval={world[0]}")
    return {b.kind + ("_cn" if getattr(b, "lang", "en") == "cn" else ""): b for b in load_suite(cfg.eval)}


def truth(bench, q) -> str:
    """The answer the ground truth gives, as a model would write it."""
    ref = q.reference
    if bench.kind in ("vqav2", "vizwiz", "textvqa"):
        return Counter(ref).most_common(1)[0][0].capitalize() + "."
    if bench.kind == "scienceqa":
        return "ABCDE"[ref[0]]
    if bench.kind == "seed":
        return ref[0]
    if bench.kind == "mmvet":
        return " and ".join(ref.split("<AND>")).split("<OR>")[0]
    if bench.kind == "refcoco":
        return bench.reference_text(q)  # LLaVA's two decimals
    return ref


def test_every_analog_loads_through_its_real_task(world, benches):
    _, report, _ = world
    assert set(benches) == set(DEFAULT_SIZES) == set(report)
    for name, bench in benches.items():
        qs = bench.questions()
        assert len(qs) == report[name]["questions"] and all(q.reference is not None for q in qs), name
    for name in ("vqav2", "gqa", "vizwiz", "textvqa", "seed", "mmvet", "refcoco", "llava_bench", "scienceqa"):
        assert report[name]["questions"] == SIZES[name], name
    assert report["mme"]["questions"] == SIZES["mme"] and report["pope"]["questions"] == SIZES["pope"]
    assert len({q.question_id % 1_000_000 for q in benches["mmbench"].questions()}) == SIZES["mmbench"]
    assert all("\nReference OCR token: " in q.text for q in benches["textvqa"].questions())
    cn = [q.text for q in benches["mmbench_cn"].questions()]
    assert all(any("\u4e00" <= ch <= "\u9fff" for ch in t.split("\n")[0] + t.split("\n")[1]) for t in cn)


def test_ground_truth_scores_full_marks(benches):
    headline = {"vqav2": 100, "gqa": 100, "vizwiz": 100, "scienceqa": 100, "textvqa": 100, "pope": 100, "mme": 1000,
                "mmbench": 100, "mmbench_cn": 100, "seed": 100, "llava_bench": 100, "mmvet": 100, "refcoco": 100}
    for name, bench in benches.items():
        qs = bench.questions()
        scored = bench.score(qs, [truth(bench, q) for q in qs])
        assert bench.headline(scored.scores) == pytest.approx(headline[name]), name
        assert all(s == pytest.approx(1.0) for s in scored.per_question), name
    mme = benches["mme"]
    scores = mme.score(mme.questions(), [q.reference for q in mme.questions()]).scores
    assert scores["cognition_score"] == pytest.approx(200.0)  # numerical_calculation
    assert all(scores[f"{t}/score"] == pytest.approx(200.0) for t in ("existence", "count", "position", "color", "OCR"))
    assert benches["refcoco"].score(benches["refcoco"].questions(), [truth(benches["refcoco"], q) for q in
                                                                     benches["refcoco"].questions()]
                                    ).scores["n_unparsable"] == 0


def _score(bench, answer) -> dict[str, float]:
    qs = bench.questions()
    return bench.score(qs, [answer(q) for q in qs]).scores


def test_wrong_answers_score_what_they_should(benches):
    flip = {"yes": "no", "no": "yes", "Yes": "No", "No": "Yes"}
    assert _score(benches["pope"], lambda q: flip[q.reference])["mean_f1"] == 0.0
    # every split is half yes: answering yes to all is precision 1/2, recall 1, F1 2/3
    assert _score(benches["pope"], lambda q: "Yes")["mean_f1"] == pytest.approx(2 / 3)
    assert _score(benches["mme"], lambda q: flip[q.reference])["perception_score"] == 0.0
    # yes to all: acc 1/2 and acc+ 0 in every subtask (each image has one yes and one no)
    scores = _score(benches["mme"], lambda q: "Yes")
    assert (scores["perception_score"], scores["cognition_score"]) == pytest.approx((250.0, 50.0))
    for name in ("mmbench", "mmbench_cn"):  # "A" is right in one rotation of each question only: never circularly
        assert _score(benches[name], lambda q: "A")["acc"] == 0.0, name
    gqa = benches["gqa"]
    yes = sum(q.reference == "yes" for q in gqa.questions()) / len(gqa.questions())
    assert _score(gqa, lambda q: "Yes")["acc"] == pytest.approx(yes) and 0.15 < yes < 0.35  # balanced yes/no
    for name, key in (("gqa", "acc"), ("vqav2", "acc"), ("textvqa", "acc"), ("mmvet", "score"), ("seed", "acc")):
        assert _score(benches[name], lambda q: "zzz")[key] == 0.0, name
    refcoco = benches["refcoco"]
    whole = _score(refcoco, lambda q: "[0.00, 0.00, 1.00, 1.00]")  # the whole image: IoU = the object's area < 0.5
    assert whole["acc"] == 0.0 and whole["n_unparsable"] == 0
    assert _score(refcoco, lambda q: "the red one")["n_unparsable"] == len(refcoco.questions())


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_pope_negatives_are_absent_and_positives_present(world):
    root, _, scenes = world
    for split in ("random", "popular", "adversarial"):
        labels = _lines(root / "pope" / "coco" / f"coco_pope_{split}.json")
        assert Counter(r["label"] for r in labels) == {"yes": SIZES["pope"] // 6, "no": SIZES["pope"] // 6}
        negatives: dict[str, set[str]] = {}
        for r in labels:
            scene = scenes[f"pope/val2014/{r['image']}"]
            kind = r["text"].removeprefix("Is there a ").removesuffix(" in the image?")
            assert (scene.count(kind) > 0) == (r["label"] == "yes"), (split, r)
            if r["label"] == "no":
                negatives.setdefault(r["image"], set()).add(kind)
        if split == "adversarial":  # an absent look-alike of what is there is always among the negatives
            for image, asked in negatives.items():
                scene = scenes[f"pope/val2014/{image}"]
                alike = {c for o in scene.objects for c in LOOKALIKE[o.kind] if not scene.count(c)}
                assert not alike or asked & alike, (image, asked, alike)


def test_mme_asks_one_yes_and_one_no_per_image(world):
    root, _, scenes = world
    release = root / "MME" / "MME_Benchmark_release_version"
    files = sorted(release.rglob("*.txt"))
    assert len(files) == SIZES["mme"] // 2
    for txt in files:
        lines = txt.read_text().splitlines()
        assert sorted(line.split("\t")[1] for line in lines) == ["No", "Yes"], txt
        assert all(line.split("\t")[0].endswith("Please answer yes or no.") for line in lines)
    rows = _lines(root / "MME" / "llava_mme.jsonl")
    assert set(Counter(r["question_id"] for r in rows).values()) == {2}
    for subtask in ("existence", "color"):  # "Is there a [colour] <kind> in this image?" agrees with the scene
        for txt in (release / subtask).rglob("*.txt"):
            scene = scenes[f"MME/MME_Benchmark_release_version/{subtask}/{'images/' * (subtask == 'color')}"
                           f"{txt.stem}.png"]
            for line in txt.read_text().splitlines():
                *colour, kind = line.split("\t")[0].removeprefix("Is there a ").split(" in this image?")[0].split()
                assert (scene.count(kind, *colour) > 0) == (line.split("\t")[1] == "Yes"), line


def test_refcoco_boxes_are_the_named_objects(world):
    root, _, scenes = world
    for row in _lines(root / "refcoco" / "refcoco_val.jsonl"):
        scene = scenes[f"refcoco/images/{row['image']}"]
        expression = row["text"].split("describes: ")[1].removesuffix(".")
        (k,) = [k for k, o in enumerate(scene.objects) if box_iou(o.box, row["bbox"]) > 0.99]
        assert referring_expression(scene, k) == expression
        assert (row["width"], row["height"]) == (scene.width, scene.height)


def test_vizwiz_unanswerable_questions_name_what_is_not_there(world):
    root, _, scenes = world
    anns = json.loads((root / "vizwiz" / "val.json").read_text())
    unanswerable = [a for a in anns if not a["answerable"]]
    assert 0 < len(unanswerable) < len(anns)
    for a in unanswerable:
        scene = scenes[f"vizwiz/val/{a['image']}"]
        assert not any(f" {k}" in a["question"] and scene.count(k) for k in FACTS), a["question"]


def test_knowledge_items_ask_held_out_facts_only(world):
    root, _, _ = world
    mmvet = json.loads((root / "mm-vet" / "mm-vet.json").read_text())
    asked = [FACT_OF_VALUE[e["answer"]] for e in mmvet.values() if "know" in e["capability"]]
    problems = json.loads((root / "scienceqa" / "problems.json").read_text())
    asked += [FACT_OF_VALUE[p["choices"][p["answer"]]] for p in problems.values()
              if p["choices"][p["answer"]] in FACT_OF_VALUE]
    seed = json.loads((root / "seed_bench" / "SEED-Bench.json").read_text())["questions"]
    asked += [FACT_OF_VALUE[q[f"choice_{q['answer'].lower()}"]] for q in seed
              if q[f"choice_{q['answer'].lower()}"] in FACT_OF_VALUE]
    assert len(asked) >= 10 and set(asked) <= HELD_FACTS


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_files_depend_on_the_seed_and_each_analogs_own_size_only(tmp_path):
    small = {k: 8 for k in DEFAULT_SIZES} | {"scienceqa": 40, "mmvet": 40}  # several draws of each kind
    build_benchmarks(tmp_path / "a", small, SEED, HELD_FACTS, progress=False)
    build_benchmarks(tmp_path / "b", small, SEED, HELD_FACTS, progress=False)
    build_benchmarks(tmp_path / "c", {**small, "gqa": 11}, SEED, HELD_FACTS, progress=False)
    build_benchmarks(tmp_path / "d", small, SEED + 1, split_facts(SEED + 1)[1], progress=False)
    a, b, c, d = (_hashes(tmp_path / x) for x in "abcd")
    assert a == b
    assert {k: v for k, v in a.items() if not k.startswith("gqa/")} == \
        {k: v for k, v in c.items() if not k.startswith("gqa/")}
    assert {k for k in a if a[k] != c.get(k)} >= {"gqa/llava_gqa_testdev_balanced.jsonl"}
    assert a["MME/llava_mme.jsonl"] != d["MME/llava_mme.jsonl"]
    # ... and not on the process: another interpreter with another string-hash seed writes the same bytes
    code = ("import sys; from pathlib import Path; from lmm.world.benchmarks import build_benchmarks; "
            "from lmm.world.knowledge import split_facts; "
            f"build_benchmarks(Path(sys.argv[1]), {small!r}, {SEED}, split_facts({SEED})[1], progress=False)")
    env = dict(os.environ, PYTHONHASHSEED="12345")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "e")], check=True, cwd=ROOT, env=env)
    assert _hashes(tmp_path / "e") == a


def test_sizes_are_checked_and_defaults_fill_in(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark analogs"):
        build_benchmarks(tmp_path, {"okvqa": 3}, SEED, HELD_FACTS, progress=False)
    with pytest.raises(ValueError, match="no facts"):
        build_benchmarks(tmp_path, {"gqa": 3}, SEED, set(), progress=False)
    report = build_benchmarks(tmp_path, {k: 0 for k in DEFAULT_SIZES} | {"refcoco": 3}, SEED, HELD_FACTS,
                              progress=False)
    assert report == {"refcoco": {"folder": "refcoco", "questions": 3, "images": 3}}
    assert DEFAULT_SIZES["gqa"] >= 2000 and DEFAULT_SIZES["mmvet"] >= 1000
