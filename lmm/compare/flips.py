"""What a change actually changed: for each rung and the rung it is compared with, the questions whose correctness
flipped (image, question, both answers, reference), as a self-contained HTML page (thumbnails embedded as base64,
so it opens anywhere, offline, without a W&B account).

A question counts as correct when its score is >= 0.999, the rule the evaluation's own W&B sample table uses
(lmm.eval.runner); for partial-credit benchmarks (MM-Vet) a flip is a move to or from full marks. With several seeds
the pair compared is the same seed in both rungs (the lowest seed they share, else each rung's first run).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lmm.compare.runs import Run, Rung
from lmm.compare.table import Comparison

CORRECT_AT = 0.999
THUMBNAIL = 112  # px, longest side of the embedded images


@dataclass
class Flip:
    benchmark: str
    uid: int
    question_id: Any
    image: str | None
    question: str
    reference: str
    answer_before: str
    answer_after: str
    fixed: bool  # wrong before, right after (else: broken)


@dataclass
class FlipSet:
    """The flips between one pair of runs (the same seed of two rungs)."""

    before: str  # rung names
    after: str
    run_before: str  # run ids
    run_after: str
    seed: int | None
    flips: dict[str, list[Flip]] = field(default_factory=dict)  # benchmark -> flips
    skipped: dict[str, str] = field(default_factory=dict)  # benchmark -> why no list


def _correct(score: Any) -> bool | None:
    return None if score is None else float(score) >= CORRECT_AT


def pair_runs(before: Rung, after: Rung) -> tuple[Run, Run]:
    """The same seed of both rungs: the lowest seed they share, else each rung's first run."""
    shared = sorted({r.seed for r in before.runs} & {r.seed for r in after.runs} - {None})
    if shared:
        return (next(r for r in before.runs if r.seed == shared[0]), next(r for r in after.runs if r.seed == shared[0]))
    return before.runs[0], after.runs[0]


def flips_between(run_a: Run, run_b: Run, benchmarks: list[str], before: str, after: str) -> FlipSet:
    out = FlipSet(before, after, run_a.run_id, run_b.run_id, run_a.seed if run_a.seed == run_b.seed else None)
    for bench in benchmarks:
        ra = run_a.benchmarks.get(bench)
        rb = run_b.benchmarks.get(bench)
        recs_a = ra.records() if ra is not None else None
        recs_b = rb.records() if rb is not None else None
        if not recs_a or not recs_b:
            out.skipped[bench] = "no per_question.jsonl"
            continue
        if [r["question_id"] for r in recs_a] != [r["question_id"] for r in recs_b]:
            out.skipped[bench] = "different question sets"
            continue
        found = []
        for a, b in zip(recs_a, recs_b, strict=True):
            ca, cb = _correct(a.get("score")), _correct(b.get("score"))
            if ca is None or cb is None or ca == cb:
                continue
            found.append(Flip(bench, a["uid"], a["question_id"], a.get("image"), a.get("question", ""),
                              a.get("reference", ""), a.get("answer", ""), b.get("answer", ""), fixed=cb))
        out.flips[bench] = found
    return out


def all_flips(c: Comparison) -> list[FlipSet]:
    """One FlipSet per rung that has a reference rung, in table order."""
    by_name = {r.name: r for r in c.rungs}
    out = []
    for rung in c.rungs:
        ref = c.reference.get(rung.name)
        if ref is None:
            continue
        run_a, run_b = pair_runs(by_name[ref], rung)
        out.append(flips_between(run_a, run_b, c.benchmarks, ref, rung.name))
    return out


def thumbnail(path: str | None, cache: dict[str, str]) -> str:
    """An <img> with the image inlined as a small JPEG data URI ('' when the image is absent or embedded)."""
    if not path or path.startswith("embedded:") or not Path(path).is_file():
        return ""
    if path not in cache:
        from PIL import Image

        try:
            with Image.open(path) as img:
                img = img.convert("RGB")
                img.thumbnail((THUMBNAIL, THUMBNAIL))
                buf = io.BytesIO()
                img.save(buf, format="JPEG", quality=80)
            cache[path] = base64.b64encode(buf.getvalue()).decode()
        except OSError:
            cache[path] = ""
    return f'<img src="data:image/jpeg;base64,{cache[path]}" alt="">' if cache[path] else ""


_STYLE = ("body{font-family:sans-serif;margin:1.5em;max-width:1200px}"
          "table{border-collapse:collapse;margin:.5em 0 1.5em}"
          "td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;font-size:13px}th{background:#f3f3f3}"
          ".fixed{color:#1a7f37}.broken{color:#c62828}pre{white-space:pre-wrap;margin:0;font-family:inherit}"
          "img{max-width:112px}")


def html_page(c: Comparison, sets: list[FlipSet], max_per_benchmark: int = 40) -> str:
    """The flips of every rung pair; per benchmark the counts in full and at most `max_per_benchmark` rows."""
    e = html.escape
    cache: dict[str, str] = {}
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lmm compare: flipped questions</title>"
             f"<style>{_STYLE}</style></head><body><h1>Questions whose correctness flipped</h1>"
             f"<p>correct = score ≥ {CORRECT_AT}; each pair compares the same seed of both rungs. "
             f"<span class='fixed'>fixed</span> = wrong before, right after; <span class='broken'>broken</span> = "
             "the reverse.</p>"]
    for s in sets:
        seed = f"seed {s.seed}" if s.seed is not None else "different seeds"
        parts.append(f"<h2>{e(s.before)} → {e(s.after)} <small>({e(s.run_before)} vs {e(s.run_after)}, "
                     f"{seed})</small></h2>")
        for bench in c.benchmarks:
            if bench in s.skipped:
                parts.append(f"<h3>{e(c.label(bench))}</h3><p>no list: {e(s.skipped[bench])}</p>")
                continue
            flips = s.flips.get(bench, [])
            fixed = sum(f.fixed for f in flips)
            shown = sorted(flips, key=lambda f: (not f.fixed, f.uid))[:max_per_benchmark]
            more = f" (first {len(shown)} shown)" if len(shown) < len(flips) else ""
            parts.append(f"<h3>{e(c.label(bench))}: <span class='fixed'>{fixed} fixed</span>, "
                         f"<span class='broken'>{len(flips) - fixed} broken</span>{more}</h3>")
            if not shown:
                continue
            parts.append(f"<table><tr><th></th><th>image</th><th>question</th><th>reference</th>"
                         f"<th>{e(s.before)}</th><th>{e(s.after)}</th></tr>")
            for f in shown:
                mark = "<span class='fixed'>fixed</span>" if f.fixed else "<span class='broken'>broken</span>"
                image = thumbnail(f.image, cache)
                where = e(Path(f.image).name if f.image and not f.image.startswith("embedded:") else f.image or "")
                parts.append(f"<tr><td>{mark}<br>{e(str(f.question_id))}</td><td>{image}<br><small>{where}</small>"
                             f"</td><td><pre>{e(f.question)}</pre></td><td><pre>{e(f.reference)}</pre></td>"
                             f"<td><pre>{e(f.answer_before)}</pre></td><td><pre>{e(f.answer_after)}</pre></td></tr>")
            parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)
