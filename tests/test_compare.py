"""python -m lmm.compare on fixture run folders written here (3 ladder rungs x 2 seeds + one arm), checked against
hand-computed numbers and against intervals computed independently with numpy; and the per-question records the
evaluation writes (lmm.eval) reproduce each benchmark's own headline when lmm.compare recomputes it."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from lmm.compare.__main__ import main
from lmm.compare.bootstrap import point_value, statistic_for, unit_table
from lmm.compare.flips import all_flips
from lmm.compare.runs import load_rungs
from lmm.compare.table import Cell, compare
from lmm.eval.files import PER_QUESTION_FILE, write_per_question
from lmm.eval.tasks import GQA, MME, POPE

B, SEED = 500, 7
# GQA correctness per (rung, seed), 10 hand-chosen answers repeated twice (20 questions)
GQA_OK = {("baseline", 1): [1, 0, 0, 1, 0, 0, 1, 0, 0, 0],  # 30
          ("baseline", 2): [1, 0, 0, 1, 0, 1, 1, 0, 0, 0],  # 40
          ("vqav2", 1): [1, 1, 0, 1, 0, 1, 1, 0, 1, 0],  # 60
          ("vqav2", 2): [1, 1, 1, 1, 0, 1, 1, 0, 1, 0],  # 70
          ("format_prompt", 1): [1, 1, 0, 1, 0, 1, 1, 0, 1, 0],  # 60
          ("format_prompt", 2): [1, 1, 1, 1, 1, 1, 1, 0, 1, 0],  # 80
          ("qformer_lite", 2): [1, 0, 0, 0, 0, 0, 0, 0, 0, 0]}  # 10 (seed 2 only)
ROWS = {"baseline": 0, "vqav2": 1, "format_prompt": 2, "qformer_lite": None}
# MME: per subtask, 3 images x 2 questions (image i = questions 2i, 2i+1); code_reasoning is cognition (not counted)
MME_OK = {"baseline": {"existence": [1, 1, 1, 0, 0, 0], "count": [1, 1, 1, 1, 0, 1], "code_reasoning": [0] * 6},
          "vqav2": {"existence": [1, 1, 1, 1, 0, 1], "count": [1, 1, 1, 1, 1, 1], "code_reasoning": [1] * 6},
          "format_prompt": {"existence": [1, 1, 1, 1, 1, 1], "count": [0, 1, 1, 1, 1, 1],
                            "code_reasoning": [1] * 6},
          "qformer_lite": {"existence": [0] * 6, "count": [0] * 6, "code_reasoning": [0] * 6}}


def _gqa_records(ok: list[int], image: Path) -> list[dict]:
    ok = ok * 2
    return [{"uid": i, "question_id": str(100 + i), "score": float(c), "in_headline": True, "image": str(image),
             "question": f"question {i}?", "answer": "red" if c else f"wrong{i}", "reference": "red"}
            for i, c in enumerate(ok)]


def _mme_records(ok: dict[str, list[int]]) -> list[dict]:
    out = []
    for subtask, marks in ok.items():
        for j, c in enumerate(marks):
            out.append({"uid": len(out), "question_id": f"{subtask}/{j // 2}.png", "score": float(c),
                        "in_headline": subtask != "code_reasoning", "image": None, "question": f"{subtask} {j}",
                        "answer": "Yes", "reference": "Yes" if c else "No", "subtask": subtask,
                        "image_id": f"{subtask}/{j // 2}.png"})
    return out


def mme_by_hand(ok: dict[str, list[int]]) -> float:
    total = 0.0
    for subtask in ("existence", "count"):
        m = ok[subtask]
        total += 100 * sum(m) / 6 + 100 * sum(m[2 * i] and m[2 * i + 1] for i in range(3)) / 3
    return total


def write_run(root: Path, rung: str, seed: int, image: Path, costs: bool = True) -> Path:
    folder = root / f"run-{rung}-s{seed}"
    (folder / "eval").mkdir(parents=True)
    ablation = {"name": rung, "row": ROWS[rung]} | ({"base": "vqav2"} if rung == "qformer_lite" else {})
    (folder / "config.yaml").write_text(yaml.safe_dump({"run_id": folder.name, "seed": seed, "ablation": ablation}))
    stage = {"seconds": 100.0 * (1 + ROWS.get(rung) if ROWS.get(rung) is not None else 50.0),
             "params/trainable": 1_000_000 * (seed + 1), "model/visual_tokens_per_image": 64,
             "trained": {"samples": 2000}} if costs else {}
    align = {"seconds": 999.0, "reused": True}  # trained by an earlier run: not this run's training time
    (folder / "results.json").write_text(json.dumps({"run_id": folder.name,
                                                     "stages": {"align": align, "instruct": stage}}))
    benches = {"tiny_gqa": ("gqa", _gqa_records(GQA_OK[(rung, seed)], image)),
               "tiny_mme": ("mme", _mme_records(MME_OK[rung]))}
    for name, (kind, records) in benches.items():
        d = folder / "eval" / name
        d.mkdir()
        headline = 100 * np.mean(GQA_OK[(rung, seed)]) if kind == "gqa" else mme_by_hand(MME_OK[rung])
        (d / "scores.json").write_text(json.dumps({"kind": kind, "headline": float(headline),
                                                   "headline_metric": "acc"}))
        (d / PER_QUESTION_FILE).write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


@pytest.fixture
def runs(tmp_path) -> Path:
    root = tmp_path / "runs"
    image = tmp_path / "img.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    # written in an order that is neither the ladder's nor the names'
    for rung, seed in [("format_prompt", 2), ("qformer_lite", 2), ("vqav2", 1), ("baseline", 2), ("format_prompt", 1),
                       ("baseline", 1), ("vqav2", 2)]:
        write_run(root, rung, seed, image)
    return root


def comparison(root: Path, **kwargs):
    return compare(load_rungs([str(root / "run-*")]), resamples=B, seed=SEED, **kwargs)


# ----------------------------------------------------------------------------------------------- numbers by hand
def test_rungs_in_ladder_order_with_seeds(runs):
    c = comparison(runs)
    assert [r.name for r in c.rungs] == ["baseline", "vqav2", "format_prompt", "qformer_lite"]
    assert [r.seeds for r in c.rungs] == [[1, 2], [1, 2], [1, 2], [2]]
    assert c.reference == {"baseline": None, "vqav2": "baseline", "format_prompt": "vqav2", "qformer_lite": "vqav2"}
    assert c.benchmarks == ["tiny_gqa", "tiny_mme"] and c.label("tiny_gqa") == "GQA"


def test_an_arm_is_any_rung_that_names_its_base(runs):
    """A rung beside the ladder that names its base (hd, anyres, a user's own) is an arm, compared with its base;
    only a run whose config names no rung is reported as such."""
    import shutil

    for name, ablation in (("my_arm", {"name": "my_arm", "row": None, "base": "vqav2"}), ("loose", None)):
        folder = runs / f"run-{name}-s2"
        shutil.copytree(runs / "run-qformer_lite-s2", folder)
        config = yaml.safe_load((folder / "config.yaml").read_text())
        config.pop("ablation")
        (folder / "config.yaml").write_text(yaml.safe_dump(config | ({"ablation": ablation} if ablation else {})))
        results = json.loads((folder / "results.json").read_text())
        (folder / "results.json").write_text(json.dumps(results | {"run_id": folder.name}))
    c = comparison(runs)
    assert c.reference["my_arm"] == "vqav2"
    assert [n for n in c.notes if "without an ablation rung" in n] == [
        "runs without an ablation rung in their config, named by run id: run-loose-s2"]


def test_mean_std_and_deltas_by_hand(runs):
    c = comparison(runs)
    gqa = {r: c.cells[(r, "tiny_gqa")] for r in ("baseline", "vqav2", "format_prompt", "qformer_lite")}
    assert gqa["baseline"].mean == pytest.approx(35.0) and gqa["vqav2"].mean == pytest.approx(65.0)
    assert gqa["format_prompt"].mean == pytest.approx(70.0)
    # sample std (ddof=1) of two seeds 10 apart: 10/sqrt(2); of 60 and 80: 20/sqrt(2)
    assert gqa["baseline"].std == pytest.approx(7.0710678, abs=1e-6)
    assert gqa["format_prompt"].std == pytest.approx(14.1421356, abs=1e-6)
    assert gqa["qformer_lite"].std is None  # one seed
    assert gqa["baseline"].delta is None
    assert gqa["vqav2"].delta == pytest.approx(30.0) and gqa["format_prompt"].delta == pytest.approx(5.0)
    assert gqa["qformer_lite"].delta == pytest.approx(10.0 - 65.0)  # an arm: from its ablation.base
    mme = {r: c.cells[(r, "tiny_mme")] for r in ("baseline", "vqav2", "format_prompt")}
    # baseline: existence 50 + 33.3, count 83.3 + 66.7 = 233.3; vqav2: 83.3+66.7 + 100+100 = 350
    assert mme["baseline"].mean == pytest.approx(100 * 3 / 6 + 100 / 3 + 100 * 5 / 6 + 200 / 3)
    assert mme["vqav2"].delta == pytest.approx(350.0 - 700 / 3)
    assert not any("per-question records give" in n for n in c.notes)  # records agree with scores.json


def _independent_gqa_interval(rungs: list[str], pair: tuple[str, str]) -> tuple[float, float]:
    """The documented draws, written out again: questions once for every run, then seeds per rung in table order."""
    rng = np.random.default_rng(SEED)
    n = 20
    idx = rng.integers(0, n, size=(B, n))
    acc = {key: 100 * np.asarray(ok * 2, float)[idx].mean(axis=1) for key, ok in GQA_OK.items()}
    rung_values = {}
    for rung in rungs:
        seeds = [s for (r, s) in GQA_OK if r == rung]
        pick = rng.integers(0, len(seeds), size=(B, len(seeds)))
        per_seed = np.stack([acc[(rung, s)] for s in seeds], axis=1)  # (B, seeds)
        rung_values[rung] = np.take_along_axis(per_seed, pick, axis=1).mean(axis=1)
    d = rung_values[pair[1]] - rung_values[pair[0]]
    return tuple(np.percentile(d, [2.5, 97.5]))


def test_bootstrap_interval_matches_an_independent_computation(runs):
    c = comparison(runs)
    order = [r.name for r in c.rungs]
    for before, after in [("baseline", "vqav2"), ("vqav2", "format_prompt"), ("vqav2", "qformer_lite")]:
        lo, hi = _independent_gqa_interval(order, (before, after))
        cell = c.cells[(after, "tiny_gqa")]
        assert (cell.lo, cell.hi) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9)), (before, after)
        assert cell.distinguishable == (lo > 0 or hi < 0)
    # every paired difference of vqav2 over baseline is >= 0 and most resamples keep a fixed question: distinct;
    # format_prompt differs from vqav2 in one question of one seed: indistinguishable
    assert c.cells[("vqav2", "tiny_gqa")].distinguishable is True
    assert c.cells[("format_prompt", "tiny_gqa")].distinguishable is False
    assert c.cells[("qformer_lite", "tiny_gqa")].distinguishable is True


def test_mme_interval_resamples_images_within_subtasks(runs):
    c = comparison(runs)
    rng = np.random.default_rng(SEED)
    draws = {s: rng.integers(0, 3, size=(B, 3)) for s in sorted(["count", "existence"])}  # 3 images per subtask

    def mme(ok: dict[str, list[int]]) -> np.ndarray:
        total = np.zeros(B)
        for s, pick in draws.items():
            m = np.asarray(ok[s]).reshape(3, 2)[pick]  # (B, 3 images, 2 questions)
            total += 100 * m.mean(axis=(1, 2)) + 100 * m.all(axis=2).mean(axis=1)
        return total

    values = {}
    for rung in [r.name for r in c.rungs]:
        n = len([1 for (r, _) in GQA_OK if r == rung])
        rng.integers(0, n, size=(B, n))  # the seed draws, consumed in table order
        values[rung] = mme(MME_OK[rung])  # both seeds share the rung's MME answers: seed draws change nothing
    lo, hi = np.percentile(values["format_prompt"] - values["vqav2"], [2.5, 97.5])
    cell = c.cells[("format_prompt", "tiny_mme")]
    assert (cell.lo, cell.hi) == (pytest.approx(lo, abs=1e-9), pytest.approx(hi, abs=1e-9))


def test_flipped_questions(runs):
    c = comparison(runs)
    sets = {(s.before, s.after): s for s in all_flips(c)}
    assert set(sets) == {("baseline", "vqav2"), ("vqav2", "format_prompt"), ("vqav2", "qformer_lite")}
    s = sets[("baseline", "vqav2")]
    assert s.seed == 1 and (s.run_before, s.run_after) == ("run-baseline-s1", "run-vqav2-s1")
    flips = s.flips["tiny_gqa"]
    # seed 1: baseline wrong, vqav2 right at 1, 5, 8 (and their repeats 11, 15, 18); none the other way
    assert [f.uid for f in flips] == [1, 5, 8, 11, 15, 18] and all(f.fixed for f in flips)
    f = flips[0]
    assert (f.question, f.answer_before, f.answer_after, f.reference) == ("question 1?", "wrong1", "red", "red")
    assert f.image.endswith("img.png")
    arm = sets[("vqav2", "qformer_lite")]  # the arm has seed 2 only: compared with vqav2's seed 2, not its first run
    assert arm.seed == 2 and arm.run_before == "run-vqav2-s2"
    broken = arm.flips["tiny_gqa"]
    assert {f.uid for f in broken} == {1, 2, 3, 5, 6, 8, 11, 12, 13, 15, 16, 18} and not any(f.fixed for f in broken)


# -------------------------------------------------------------------------------------------------- outputs
def test_command_writes_every_output(runs, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    assert main([str(runs), "--out", str(out), "--resamples", str(B), "--seed", str(SEED), "--costs",
                 "--paper"]) == 0
    printed = capsys.readouterr().out
    md = (out / "table.md").read_text()
    assert md in printed
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert [line.split(" | ")[1] for line in lines[1:]] == ["baseline", "vqav2", "format_prompt", "qformer_lite"]
    vq = lines[2].split(" | ")
    assert vq[3] == "65.00 ± 7.07" and vq[4].startswith("+30.00 [") and vq[4].endswith("]*")
    assert vq[5] == "47.0" and vq[8] == "1197.0 (+387.4)"  # the paper's GQA (none at row 0) and MME at row 1
    assert "sample std, ddof=1" in md and "paper's material changes" in md
    assert "| 2.50M | 64 | 1:40 | 20.0 | - |" in lines[1]  # mean trainable parameters of seeds 1, 2 (2M, 3M)
    assert lines[1].rstrip(" |").endswith("-")  # no peak memory recorded
    rows = (out / "table.csv").read_text().splitlines()
    assert rows[0].startswith("row,rung,reference,seeds,tiny_gqa/mean") and rows[2].startswith("1,vqav2,baseline,1;2")
    assert r"\toprule" in (out / "table.tex").read_text() and r"$\pm$" in (out / "table.tex").read_text()
    assert (out / "ladder.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "flips.html").read_text()
    assert "data:image/jpeg;base64," in page and "wrong1" in page and "6 fixed" in page
    assert "W&B" in printed


def test_paper_numbers_only_when_asked_or_paper_preset(runs):
    assert not comparison(runs).show_paper
    c = comparison(runs, show_paper=True)
    assert c.cells[("baseline", "tiny_mme")].paper == 809.6 and c.cells[("vqav2", "tiny_gqa")].paper == 47.0
    assert c.cells[("vqav2", "tiny_mme")].paper_delta == pytest.approx(387.4)


# ------------------------------------------------------------------------- the evaluation's per-question records
def test_eval_records_reproduce_each_headline(tmp_path):
    """Real benchmark classes score hand-made answers; compare's statistic on their per_question.jsonl must give the
    benchmark's own headline (GQA accuracy, MME perception acc+acc+, POPE mean F1)."""
    (tmp_path / "q.jsonl").write_text("".join(json.dumps({"question_id": str(i), "image": "x.png", "text": f"q{i}?"})
                                              + "\n" for i in range(5)))
    (tmp_path / "gt.json").write_text(json.dumps({str(i): {"answer": "red"} for i in range(5)}))
    gqa = GQA(tmp_path / "q.jsonl", tmp_path / "gt.json", tmp_path, check_images=False)
    mme_rows, gt_root = [], tmp_path / "mme"
    for sub in ("existence", "count", "code_reasoning"):
        (gt_root / sub).mkdir(parents=True)
        for img in range(2):
            (gt_root / sub / f"{img}.txt").write_text(f"Is it {img}a?\tYes\nIs it {img}b?\tNo\n")
            mme_rows += [{"question_id": f"{img}.png", "image": f"{img}.png", "text": f"Is it {img}{x}?",
                          "category": sub} for x in "ab"]
    (tmp_path / "mme.jsonl").write_text("".join(json.dumps(r) + "\n" for r in mme_rows))
    mme = MME(tmp_path / "mme.jsonl", gt_root, check_images=False)
    labels = tmp_path / "pope"
    labels.mkdir()
    pope_rows = []
    for split, marks in (("popular", ["yes", "no", "yes", "no"]), ("random", ["yes", "yes", "no", "no"])):
        (labels / f"coco_pope_{split}.json").write_text("".join(json.dumps({"label": m}) + "\n" for m in marks))
        pope_rows += [{"question_id": len(pope_rows) + i, "image": "x.png", "text": "?", "category": split}
                      for i in range(4)]
    (tmp_path / "pope.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pope_rows))
    pope = POPE(tmp_path / "pope.jsonl", labels, tmp_path, splits=("popular", "random"), check_images=False)
    answers = {gqa: ["red", "Red.", "blue", "red", "no"],
               mme: ["Yes", "No", "Yes", "No", "Yes", "No", "Yes", "Yes", "No", "No", "Yes", "No"],
               pope: ["Yes", "No", "No", "Yes", "Yes", "Yes", "Yes", "No"]}
    expected = {gqa: 60.0,  # 3 of 5 ("Red." post-processes to "red")
                # existence: 4/4 right, 2/2 images -> 200; count: q3 wrong -> 75 + 50 -> 125; cognition not counted
                mme: 325.0,
                # popular: TP 1 FP 1 FN 1 -> F1 .5; random: TP 2 FP 1 FN 0 -> .8; the mean of the splits' F1
                pope: 65.0}
    for bench, texts in answers.items():
        qs = bench.questions()
        scored = bench.score(qs, texts)
        path = write_per_question(tmp_path / bench.kind / PER_QUESTION_FILE, bench, qs, texts, scored.per_question)
        records = [json.loads(line) for line in path.read_text().splitlines()]
        assert [r["uid"] for r in records] == list(range(len(qs))) and [r["answer"] for r in records] == texts
        stat = statistic_for(bench.kind)
        value = point_value(stat, *unit_table(stat, records))
        assert bench.headline(scored.scores) == pytest.approx(expected[bench]), bench.kind
        assert value == pytest.approx(expected[bench]), bench.kind
    assert {r["subtask"] for r in map(json.loads, (tmp_path / "mme" / PER_QUESTION_FILE).read_text().splitlines())} \
        == {"existence", "count", "code_reasoning"}


def test_distinguishable_means_the_interval_excludes_zero():
    assert Cell([], lo=0.1, hi=2.0).distinguishable and Cell([], lo=-2.0, hi=-0.1).distinguishable
    assert not Cell([], lo=0.0, hi=2.0).distinguishable and not Cell([], lo=-2.0, hi=0.0).distinguishable
    assert Cell([]).distinguishable is None


def test_sample_std_is_the_footer_one():
    assert statistics.stdev([30.0, 40.0]) == pytest.approx(np.std([30.0, 40.0], ddof=1))
