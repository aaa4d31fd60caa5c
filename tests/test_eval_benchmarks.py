"""Benchmark loaders on the tiny world's analogs (the real file formats): prompts, references, oracle scores,
upload files, subsets, and errors that name the file and line of malformed input."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lmm.config import register_resolvers
from lmm.data.formats import MULTIPLE_CHOICE, MULTIPLE_CHOICE_CN, SHORT_ANSWER
from lmm.eval.files import BenchmarkFileError, read_answer_file, score_answer_file
from lmm.eval.runner import build_benchmarks
from lmm.eval.tasks import (
    GQA,
    MME,
    POPE,
    MMBench,
    Question,
    QuestionFileBenchmark,
    ScienceQA,
    TextVQA,
    VizWiz,
    VQAv2,
)
from tests.conftest import SMALL_WORLD, world_root

ROOT = Path(__file__).resolve().parents[1]


def suite_config(cache: Path, suite: str = "tiny", overrides: tuple[str, ...] = ()):
    register_resolvers()
    # `eval=` once conf/config.yaml lists an eval default, `+eval=` before
    has_default = any(line.strip().startswith("- eval:") for line in (ROOT / "conf" / "config.yaml").open())
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"{'' if has_default else '+'}eval={suite}", f"paths.cache_dir={cache}",
                                            SMALL_WORLD, *overrides])


def oracle(bench, q: Question) -> str:
    """The answer a perfect model would give, in the form that benchmark's official rules accept."""
    ref = q.reference
    kind = bench.kind
    if kind in ("vqav2", "vizwiz", "textvqa"):
        return Counter(ref).most_common(1)[0][0].capitalize() + "."
    if kind == "scienceqa":
        return "ABCDE"[ref[0]]
    if kind == "seed":
        return ref[0]
    if kind == "pope":
        return ref.capitalize()
    if kind == "mmvet":
        return " and ".join(ref.split("<AND>")).split("<OR>")[0]
    if kind == "refcoco":
        return bench.reference_text(q)  # "[x1, y1, x2, y2]", two decimals
    return ref


@pytest.fixture(scope="module")
def benches(tiny_world):
    return {b.kind + ("_cn" if getattr(b, "lang", "en") == "cn" else ""): b
            for b in build_benchmarks(suite_config(tiny_world).eval)}


def test_every_analog_loads_with_llava_prompts(benches):
    assert len(benches) == 13  # the twelve + RefCOCO
    for name, bench in benches.items():
        qs = bench.questions()
        assert qs and [q.uid for q in qs] == list(range(len(qs))), name
        assert all(q.reference is not None for q in qs), name
    # the benchmarks read from a question file + one annotation file share their constructor and files()
    for name, (question_file, annotation_file) in {
            "gqa": ("llava_gqa_testdev_balanced.jsonl", "testdev_balanced_questions.json"),
            "vizwiz": ("llava_val.jsonl", "val.json"), "seed": ("llava-seed-bench.jsonl", "SEED-Bench.json"),
            "textvqa": ("llava_textvqa_val_v051_ocr.jsonl", "TextVQA_0.5.1_val.json"),
            "mmvet": ("llava-mm-vet.jsonl", "mm-vet.json")}.items():
        files = benches[name].files()
        assert isinstance(benches[name], QuestionFileBenchmark) and set(files) == {"questions", "annotations"}, name
        assert Path(files["questions"]).name == question_file, name
        assert Path(files["annotations"]).name == annotation_file, name
        assert Path(benches[name].image_root).is_dir(), name
    gqa = benches["gqa"].questions()[0]
    assert gqa.text.endswith("\n" + SHORT_ANSWER) and isinstance(gqa.question_id, str)
    assert benches["mmbench"].questions()[0].text.endswith("\n" + MULTIPLE_CHOICE)
    assert benches["mmbench_cn"].questions()[0].text.endswith("\n" + MULTIPLE_CHOICE_CN)
    vizwiz = benches["vizwiz"].questions()[0].text.split("\n")
    assert vizwiz[1].startswith("When the provided information is insufficient") and vizwiz[2] == SHORT_ANSWER
    sqa = benches["scienceqa"]
    text_only = [q for q in sqa.questions() if q.image is None]
    with_image = [q for q in sqa.questions() if q.image is not None]
    assert text_only and with_image  # tiny_scienceqa runs image_only=false
    assert sqa.prompt(with_image[0]).startswith("<image>\n") and not sqa.prompt(text_only[0]).startswith("<image>")
    # MMBench: every row of a base question is asked, rotated; the CN file's rotated rows borrow the base image
    mmb = benches["mmbench_cn"].questions()
    base = [q for q in mmb if q.question_id < 1_000_000]
    assert len(mmb) > len(base) and all(q.image.data == base[0].image.data for q in mmb
                                        if q.question_id % 1_000_000 == base[0].question_id)
    tv = benches["textvqa"].questions()[0]
    assert "\nReference OCR token: " in tv.text


def test_oracle_answers_score_perfectly_and_wrong_ones_do_not(benches):
    expect = {"vqav2": ("acc", 1.0), "gqa": ("acc", 1.0), "vizwiz": ("acc", 1.0), "scienceqa": ("acc_img", 1.0),
              "textvqa": ("acc", 1.0), "pope": ("mean_f1", 1.0), "mmbench": ("acc", 1.0), "mmbench_cn": ("acc", 1.0),
              "seed": ("acc_image", 1.0), "mmvet": ("score", 100.0), "llava_bench": ("score", 100.0),
              "refcoco": ("acc", 1.0)}
    for name, bench in benches.items():
        qs = bench.questions()
        scored = bench.score(qs, [oracle(bench, q) for q in qs])
        if name == "mme":  # 5 perception subtasks (existence, count, position, color, OCR) + 1 cognition
            assert scored.scores["perception_score"] == pytest.approx(1000.0)
            assert scored.scores["cognition_score"] == pytest.approx(200.0)
            assert bench.headline(scored.scores) == pytest.approx(1000.0)
        else:
            key, value = expect[name]
            assert scored.scores[key] == pytest.approx(value), name
        assert all(s == pytest.approx(1.0) for s in scored.per_question), name
        if name in ("llava_bench", "mmvet"):
            continue
        # (POPE parses any unrelated text as "yes", so its wrong answers are the flipped labels)
        wrong = bench.score(qs, [("No" if q.reference == "yes" else "Yes") if name == "pope" else "zzz" for q in qs])
        assert bench.headline(wrong.scores) < 50, name


def test_vqa_scores_like_the_server(benches):
    bench = benches["vqav2"]
    q = Question(0, 1, "How many?\n" + SHORT_ANSWER, None, "x:1", ["two"] + ["2"] * 3 + ["3"] * 6)
    assert bench.score([q], ["Two."]).scores["acc"] == pytest.approx(1.0)  # "two" -> "2": four matches
    q.reference = ["2"] * 2 + ["3"] * 8
    assert bench.score([q], ["2"]).scores["acc"] == pytest.approx(0.6)


def test_upload_and_official_files(benches, tmp_path):
    written = {}
    for name, bench in benches.items():
        qs = bench.questions()
        written[name] = bench.write_submission(tmp_path / name, qs, [oracle(bench, q) for q in qs])
    gqa = json.loads(written["gqa"][0].read_text())
    assert set(gqa[0]) == {"questionId", "prediction"} and gqa[0]["prediction"] == gqa[0]["prediction"].lower()
    assert {p.name for p in written["mme"]} == {"existence.txt", "count.txt", "position.txt", "color.txt", "OCR.txt",
                                                 "numerical_calculation.txt"}
    lines = written["mme"][0].read_text().splitlines()
    assert all(len(line.split("\t")) == 4 and "Please answer yes or no." in line for line in lines)
    assert lines[0].split("\t")[0] == lines[1].split("\t")[0]  # the two questions of an image are adjacent
    vqa = json.loads(written["vqav2"][0].read_text())
    assert set(vqa[0]) == {"question_id", "answer"}
    header = written["mmbench"][0].read_text().splitlines()[0].split("\t")
    assert "prediction" in header and "image" not in header and "hint" not in header
    assert json.loads(written["mmvet"][0].read_text()).keys() == {f"v1_{q.question_id}"
                                                                  for q in benches["mmvet"].questions()}


def test_answer_records_follow_llava(benches):
    mmb = benches["mmbench"]
    q = mmb.questions()[0]
    rec = mmb.answer_record(q, "A", "m")
    assert {"question_id", "prompt", "text", "answer_id", "model_id", "metadata", "round_id", "options",
            "option_char"} <= set(rec)
    assert rec["option_char"] == list("ABCD")[: len(rec["options"])] and len(rec["answer_id"]) == 22
    assert rec["answer_id"] == mmb.answer_record(q, "A", "m")["answer_id"]  # re-runs write identical files


def test_subset_keeps_groups_together(tiny_world):
    base = world_root(tiny_world) / "data" / "eval"
    kwargs = {"questions": base / "MME" / "llava_mme.jsonl", "gt_root": base / "MME" / "MME_Benchmark_release_version"}
    full = MME(**kwargs).questions()
    sub = MME(**kwargs, subset=3, subset_seed=1).questions()
    assert len(sub) == 6 and Counter((q.meta["category"], q.question_id) for q in sub).most_common()[-1][1] == 2
    assert [q.uid for q in sub] == list(range(6))
    assert {q.question_id for q in sub} <= {q.question_id for q in full}
    assert [q.question_id for q in MME(**kwargs, subset=3, subset_seed=1).questions()] == \
        [q.question_id for q in sub]
    mmb = MMBench(base / "mmbench" / "mmbench_dev_20230712.tsv", limit=1).questions()
    assert len({q.question_id % 1_000_000 for q in mmb}) == 1 and len(mmb) >= 2


# ------------------------------------------------------------------------------------------------ malformed input
def _gqa_files(tmp: Path, lines: list[str], gt: dict | None = None) -> GQA:
    (tmp / "img.png").write_bytes(b"")
    (tmp / "q.jsonl").write_text("\n".join(lines) + "\n")
    (tmp / "gt.json").write_text(json.dumps(gt if gt is not None else {"1": {"answer": "red"}}))
    return GQA(tmp / "q.jsonl", tmp / "gt.json", tmp)


def test_errors_name_file_and_line(tmp_path):
    good = json.dumps({"question_id": "1", "image": "img.png", "text": "q?"})
    with pytest.raises(BenchmarkFileError, match=r"q\.jsonl:3: invalid JSON"):
        _gqa_files(tmp_path, [good, "", '{"question_id": "2", "image": '], None).questions()
    with pytest.raises(BenchmarkFileError, match=r"q\.jsonl:2: missing field 'text'"):
        _gqa_files(tmp_path, [good, json.dumps({"question_id": "2", "image": "img.png"})]).questions()
    with pytest.raises(BenchmarkFileError, match=r"q\.jsonl:1: image not found: .*nope\.png"):
        _gqa_files(tmp_path, [json.dumps({"question_id": "1", "image": "nope.png", "text": "q"})]).questions()
    with pytest.raises(BenchmarkFileError, match=r"q\.jsonl:2: question_id '9' is not in .*gt\.json"):
        _gqa_files(tmp_path, [good, json.dumps({"question_id": "9", "image": "img.png", "text": "q"})]).questions()
    with pytest.raises(BenchmarkFileError, match=r"q\.jsonl:1: image path '\.\./x\.png' escapes"):
        _gqa_files(tmp_path, [json.dumps({"question_id": "1", "image": "../x.png", "text": "q"})]).questions()
    with pytest.raises(BenchmarkFileError, match=r"gt\.json:2: invalid JSON"):
        (tmp_path / "q.jsonl").write_text(good + "\n")
        (tmp_path / "gt.json").write_text('{"1":\n {"answer": }}')
        GQA(tmp_path / "q.jsonl", tmp_path / "gt.json", tmp_path).questions()
    with pytest.raises(BenchmarkFileError, match="question file not found"):
        GQA(tmp_path / "missing.jsonl", None, tmp_path).questions()


def test_structured_file_errors(tiny_world, tmp_path):
    base = world_root(tiny_world) / "data" / "eval"
    # a TSV row with a field missing names its line
    tsv = (base / "mmbench" / "mmbench_dev_20230712.tsv").read_text().splitlines()
    broken = tmp_path / "mmb.tsv"
    broken.write_text("\n".join([tsv[0], tsv[1], "\t".join(tsv[2].split("\t")[:-1])]) + "\n")
    with pytest.raises(BenchmarkFileError, match=r"mmb\.tsv:3: 13 fields, the header has 14"):
        MMBench(broken).questions()
    # POPE: question and label counts must agree per split (they are zipped by position)
    labels = tmp_path / "coco"
    labels.mkdir()
    for split in ("adversarial", "popular", "random"):
        rows = (base / "pope" / "coco" / f"coco_pope_{split}.json").read_text().splitlines()
        (labels / f"coco_pope_{split}.json").write_text("\n".join(rows[:-1] if split == "popular" else rows) + "\n")
    with pytest.raises(BenchmarkFileError, match=r"POPE popular: \d+ questions .* but \d+ labels"):
        POPE(base / "pope" / "llava_pope_test.jsonl", labels, base / "pope" / "val2014").questions()
    # ScienceQA (a JSON list): a record without conversations names its line
    records = json.loads((base / "scienceqa" / "llava_test_CQM-A.json").read_text())
    del records[1]["conversations"]
    (tmp_path / "sqa.json").write_text(json.dumps(records, indent=1))
    with pytest.raises(BenchmarkFileError, match=r"sqa\.json:\d+: missing field 'conversations'"):
        ScienceQA(tmp_path / "sqa.json", base / "scienceqa" / "images" / "test", image_only=False).questions()
    # MME: a ground-truth line without a tab
    mme = tmp_path / "MME"
    shutil.copytree(base / "MME", mme)
    gt = next((mme / "MME_Benchmark_release_version" / "existence").glob("*.txt"))
    gt.write_text(gt.read_text().replace("\t", " ", 1))
    with pytest.raises(BenchmarkFileError, match=rf"{gt.name}:1: expected 'question<TAB>Yes\|No'"):
        MME(mme / "llava_mme.jsonl", mme / "MME_Benchmark_release_version").questions()


def test_textvqa_question_recovery_and_vizwiz_build(tiny_world):
    assert TextVQA.question_of("What is it?\nReference OCR token: A, B\n" + SHORT_ANSWER) == "what is it?"
    assert TextVQA.question_of("What is it?\n" + SHORT_ANSWER) == "what is it?"
    with pytest.raises(BenchmarkFileError, match="unexpected layout"):
        TextVQA.question_of("one line only", "f.jsonl:3")
    base = world_root(tiny_world) / "data" / "eval"
    built = VizWiz(image_root=base / "vizwiz" / "val", annotations=base / "vizwiz" / "val.json").questions()
    from_file = VizWiz(base / "vizwiz" / "llava_val.jsonl", base / "vizwiz" / "val.json", base / "vizwiz" / "val"
                       ).questions()
    assert [q.text for q in built] == [q.text for q in from_file]
    assert [q.reference for q in built] == [q.reference for q in from_file]
    vqa = VQAv2(image_root=base / "vqav2" / "val2014", official_questions=base / "vqav2" /
                "v2_OpenEnded_mscoco_val2014_questions.json", image_pattern="COCO_val2014_{image_id:012d}.png")
    assert all(q.reference is None for q in vqa.questions())  # no annotations: test-dev style, upload only
    assert vqa.score(vqa.questions(), ["x"] * len(vqa.questions())).scores == {}


def test_paper_suites_point_at_llava_layout(tiny_world):
    cfg = suite_config(tiny_world, "paper12", ("paths.data_root=/data",))
    benches = cfg.eval.benchmarks
    assert list(benches) == ["vqav2", "gqa", "vizwiz", "scienceqa", "textvqa", "pope", "mme", "mmbench",
                             "mmbench_cn", "seed", "llava_bench", "mmvet"]
    assert benches.gqa.questions == "/data/eval/gqa/llava_gqa_testdev_balanced.jsonl"
    assert benches.mmvet.max_new_tokens == 1024 and benches.pope.max_new_tokens == 128
    ladder = suite_config(tiny_world, "ladder").eval.benchmarks
    assert list(ladder) == ["gqa", "mme", "mmvet"]
    judge = instantiate(suite_config(tiny_world, "ladder", (
        "eval.judge={_target_: lmm.eval.scoring.OpenAICompatibleJudge, base_url: 'http://127.0.0.1:9/v1', "
        "model: m}",)).eval.benchmarks.mmvet, name="mmvet").judge
    assert type(judge).__name__ == "OpenAICompatibleJudge" and judge.model == "m"


def test_released_llava_pope_answers_reproduce_the_paper(pope_golden_dir):
    """The real LLaVA question file + POPE label files through the POPE loader give the paper's 13B F1s."""
    golden = pope_golden_dir  # skipped without ../shared, failed under CI
    bench = POPE(golden / "llava_pope_test.jsonl", golden, golden / "val2014", check_images=False)
    assert len(bench.questions()) == 8910
    scores = score_answer_file(bench, golden / "llava-v1.5-13b_answers.jsonl").scores
    for split, f1 in (("random", 0.8714), ("popular", 0.8625), ("adversarial", 0.8446)):
        assert scores[f"{split}/f1"] == pytest.approx(f1, abs=5e-5)
    assert scores["random/yes_ratio"] == pytest.approx(0.4168, abs=5e-5)


def test_answer_files_out_of_order_are_refused(benches, tmp_path):
    bench = benches["gqa"]
    qs = bench.questions()
    rows = [bench.answer_record(q, "red", "m") for q in qs]
    rows[0], rows[1] = rows[1], rows[0]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(BenchmarkFileError, match=r"a\.jsonl:1: question_id .* out of order"):
        read_answer_file(bench, tmp_path / "a.jsonl")


def test_scoring_never_syncs_across_ranks(benches, monkeypatch):
    """Rank 0 scores the gathered answers alone: a metric that synced would wait forever for the other ranks."""
    import torchmetrics.metric

    def refuse(*args, **kwargs):
        raise AssertionError("a scoring metric tried to sync across ranks")

    monkeypatch.setattr(torchmetrics.metric, "jit_distributed_available", lambda: True)
    monkeypatch.setattr(torchmetrics.Metric, "_sync_dist", refuse)
    for bench in benches.values():
        qs = bench.questions()
        bench.score(qs, [oracle(bench, q) for q in qs])


# ------------------------------------------------------------------------------------ prompts, budgets, breakdowns
def _tsv(path: Path, rows: list[dict[str, str]]) -> Path:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 10, 10)).save(buf, format="PNG")
    image = base64.b64encode(buf.getvalue()).decode()
    header = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "l2-category", "image"]
    lines = ["\t".join(header)] + ["\t".join({"image": image, **row}.get(c, "nan") for c in header) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_mmbench_prompt_layout_with_and_without_hint(tmp_path):
    """model_vqa_mmbench: "[hint\\n]question", options until the first empty one, then the option-letter prompt."""
    rows = [{"index": "0", "question": "What shape is red?", "hint": "The image shows simple shapes.", "A": "cube",
             "B": "ball", "C": "cone", "D": "nan", "answer": "B", "category": "attr", "l2-category": "perception"},
            {"index": "1", "question": "Where is it?", "hint": "nan", "A": "left", "B": "right", "C": "nan",
             "D": "top", "answer": "A", "category": "spatial", "l2-category": "reasoning"}]
    en = MMBench(_tsv(tmp_path / "en.tsv", rows)).questions()
    assert en[0].text == ("The image shows simple shapes.\nWhat shape is red?\nA. cube\nB. ball\nC. cone\n"
                          "Answer with the option's letter from the given choices directly.")
    assert en[1].text == "Where is it?\nA. left\nB. right\nAnswer with the option's letter from the given choices " \
                         "directly."  # options stop at the first empty one (C), so D is never shown
    cn = MMBench(_tsv(tmp_path / "cn.tsv", rows), lang="cn").questions()
    assert cn[0].text == ("The image shows simple shapes.\nWhat shape is red?\nA. cube\nB. ball\nC. cone\n"
                          "请直接回答选项字母。")


# eval.md 1 / 2: 128 for the model_vqa_loader benchmarks, 1024 for model_vqa (LLaVA-Bench, MM-Vet),
# model_vqa_science (SQA) and model_vqa_mmbench (MMBench, -CN). The tiny analogs shorten this on purpose (the tiny
# world's answers are a few tokens; open-ended ones a sentence), keeping their real config as their parent.
PAPER_MAX_NEW_TOKENS = {"vqav2": 128, "gqa": 128, "vizwiz": 128, "textvqa": 128, "pope": 128, "mme": 128, "seed": 128,
                        "llava_bench": 1024, "mmvet": 1024, "scienceqa": 1024, "mmbench": 1024, "mmbench_cn": 1024,
                        "refcoco": 128}  # RefCOCO: not LLaVA's; model_vqa_loader's budget
TINY_MAX_NEW_TOKENS = {f"tiny_{k}": (48 if k in ("llava_bench", "mmvet") else 32 if k == "refcoco" else 8)
                       for k in PAPER_MAX_NEW_TOKENS}  # a box is ~15-25 tokens
BENCHMARK_CONFIGS = sorted(p.stem for p in (ROOT / "conf" / "eval" / "benchmark").glob("*.yaml"))


def test_every_benchmark_config_is_in_the_budget_table():
    assert BENCHMARK_CONFIGS == sorted(PAPER_MAX_NEW_TOKENS | TINY_MAX_NEW_TOKENS)


@pytest.mark.parametrize("name", BENCHMARK_CONFIGS)
def test_benchmark_config_max_new_tokens(tiny_world, name):
    cfg = suite_config(tiny_world, "tiny", (f"+eval/benchmark@eval.benchmarks.probe={name}",))
    expected = {**PAPER_MAX_NEW_TOKENS, **TINY_MAX_NEW_TOKENS}[name]
    assert cfg.eval.benchmarks.probe.max_new_tokens == expected
    assert build_benchmarks(cfg.eval)[-1].max_new_tokens == expected  # what inference is given
    if name.startswith("tiny_"):
        parent = (ROOT / "conf" / "eval" / "benchmark" / f"{name}.yaml").read_text()
        assert f"  - {name[len('tiny_'):]}\n" in parent  # same loader and scorer as the real benchmark
        assert "${world.eval}/" in parent and "tiny-world" not in parent  # the world's paths, written once


def test_vqav2_scores_per_answer_and_question_type(benches):
    bench = benches["vqav2"]
    qs = bench.questions()
    answers = [oracle(bench, q) if q.meta["answer_type"] != "number" else "zzz" for q in qs]
    scores = bench.score(qs, answers).scores
    types = Counter(q.meta["answer_type"] for q in qs)
    assert "number" in types and len(types) > 1
    for kind in types:
        assert scores[f"acc/{kind}"] == pytest.approx(0.0 if kind == "number" else 1.0), kind
    by_qtype: dict[str, list[float]] = {}
    for q in qs:
        by_qtype.setdefault(q.meta["question_type"], []).append(0.0 if q.meta["answer_type"] == "number" else 1.0)
    assert {k[len("acc_qtype/"):] for k in scores if k.startswith("acc_qtype/")} == set(by_qtype)
    for qtype, values in by_qtype.items():
        assert scores[f"acc_qtype/{qtype}"] == pytest.approx(sum(values) / len(values)), qtype
    assert scores["acc"] == pytest.approx(sum(q.meta["answer_type"] != "number" for q in qs) / len(qs))


def test_mmbench_scores_per_category_and_l2_category(tmp_path):
    rows = [{"index": str(i + k * 1_000_000), "question": f"q{i}", "A": "x", "B": "y", "answer": "AB"[k],
             "category": ["attr", "count", "spatial"][i], "l2-category": ["perception", "perception", "reasoning"][i]}
            for i in range(3) for k in range(2)]
    bench = MMBench(_tsv(tmp_path / "m.tsv", rows))
    qs = bench.questions()
    # question 0 right in both rotations, 1 wrong in one, 2 right
    texts = [q.reference if not (q.question_id % 1_000_000 == 1 and q.question_id > 1_000_000) else "A" for q in qs]
    assert bench.score(qs, texts).scores == pytest.approx({
        "acc": 2 / 3, "acc/attr": 1.0, "acc/count": 0.0, "acc/spatial": 1.0,
        "acc_l2/perception": 0.5, "acc_l2/reasoning": 1.0})
