"""Carve LLaVA-1.5's sources out of the 665K mixture file by rule (image folder prefix + prompt suffix, spec §9).

The file has no source field. The rules, in order:
  no image                                   -> sharegpt
  gqa/ | ocr_vqa/ | textvqa/ | vg/            -> gqa | ocrvqa | textcaps | vg
  any other folder (coco/ in the real file):
    a region prompt                          -> refcoco
    the option-letter prompt                 -> aokvqa
    the short-answer prompt                  -> vqav2, or okvqa when the record id is in --okvqa-ids
    none of these                            -> llava_instruct
VQAv2 and OKVQA are both COCO + short-answer: without a list of OKVQA record ids they stay together under "vqav2"
(the report says so). Records whose folder is neither known nor coco/ are classified like COCO ones and counted
under "unknown_prefix" in the report, so a renamed folder is seen rather than silently misfiled. An entry that is not
a JSON object belongs to no source: it is counted under "rejected" in the report (and printed) and written, with its
index, its reason and the value itself, to out_dir/rejects.jsonl, so nothing is lost without a trace.

    python -m lmm.data.sources.carve llava_v1_5_mix665k.json out_dir [--okvqa-ids ids.txt]

writes out_dir/<source>.jsonl, out_dir/carve_report.json (and out_dir/rejects.jsonl when an entry is unusable),
and prints the counts per source.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from lmm.data.formats import detect_policy
from lmm.data.records import Turn, iter_raw_records

FOLDERS = {"gqa/": "gqa", "ocr_vqa/": "ocrvqa", "textvqa/": "textcaps", "vg/": "vg"}
COCO = "coco/"
SOURCES = ("llava_instruct", "sharegpt", "vqav2", "okvqa", "gqa", "ocrvqa", "aokvqa", "textcaps", "refcoco", "vg")
CARVE_VERSION = 2  # part of the cache key of carved files: bump when the rules change
INVALID = "invalid"  # what classify() calls an entry that is not a record (never a source)
REJECTS = "rejects.jsonl"


def _turns(raw: dict) -> list[Turn]:
    convs = raw.get("conversations") or []
    return [Turn(str(t.get("from")), str(t.get("value"))) for t in convs if isinstance(t, dict)]


def classify(raw: Any, okvqa_ids: set[str] | frozenset[str] = frozenset()) -> str:
    """The source of one raw 665K record (see the module docstring for the rules)."""
    if not isinstance(raw, dict):
        return INVALID
    image = raw.get("image")
    if not image:
        return "sharegpt"
    for prefix, source in FOLDERS.items():
        if str(image).startswith(prefix):
            return source
    policy = detect_policy(_turns(raw))
    if policy == "region":
        return "refcoco"
    if policy == "multiple_choice":
        return "aokvqa"
    if policy == "short_answer":
        return "okvqa" if str(raw.get("id")) in okvqa_ids else "vqav2"
    return "llava_instruct"


def carve(records: str | os.PathLike, out_dir: str | os.PathLike, okvqa_ids: Iterable[str] | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Split `records` into out_dir/<source>.jsonl in one streaming pass; return (and write) the count report.

    Files are written under temporary names and renamed at the end, so an interrupted carve leaves no half file
    that a later run could take for a finished one.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ids = frozenset(str(i) for i in okvqa_ids) if okvqa_ids is not None else frozenset()
    tmp = Path(tempfile.mkdtemp(prefix=".carving-", dir=out))
    handles: dict[str, Any] = {}
    counts: Counter[str] = Counter()
    rejected: Counter[str] = Counter()
    (out / REJECTS).unlink(missing_ok=True)
    unknown_prefix: Counter[str] = Counter()
    total_bytes = os.path.getsize(records)
    bar = _bar(total_bytes, f"carving {Path(records).name}", progress)
    done = 0
    try:
        for index, raw, consumed in iter_raw_records(records):
            source = classify(raw, ids)
            if source == INVALID:
                reason = f"expected a JSON object, got {type(raw).__name__}"
                rejected[reason] += 1
                if INVALID not in handles:
                    handles[INVALID] = open(tmp / REJECTS, "w", encoding="utf-8")
                handles[INVALID].write(json.dumps({"file": str(records), "record": index, "reason": reason,
                                                   "stage": "carve", "value": raw}, ensure_ascii=False) + "\n")
                continue
            counts[source] += 1
            image = raw.get("image") if isinstance(raw, dict) else None
            if image and not any(str(image).startswith(p) for p in (*FOLDERS, COCO)):
                unknown_prefix[str(image).split("/", 1)[0] + "/"] += 1
            if source not in handles:
                handles[source] = open(tmp / f"{source}.jsonl", "w", encoding="utf-8")
            handles[source].write(json.dumps(raw, ensure_ascii=False) + "\n")
            if bar is not None:
                bar.update(consumed - done)
                done = consumed
        if bar is not None:
            bar.update(total_bytes - done)
        for fh in handles.values():
            fh.close()
        for source in handles:
            name = REJECTS if source == INVALID else f"{source}.jsonl"
            os.replace(tmp / name, out / name)
    finally:
        for fh in handles.values():
            fh.close()
        for f in tmp.glob("*"):
            f.unlink()
        tmp.rmdir()
        if bar is not None:
            bar.close()
    report = {"records": str(records), "total": sum(counts.values()) + sum(rejected.values()),
              "counts": {s: counts[s] for s in sorted(counts, key=lambda s: -counts[s])},
              "rejected": dict(rejected), "rejects_file": str(out / REJECTS) if rejected else None,
              "unknown_prefix": dict(unknown_prefix), "okvqa_ids_given": bool(ids),
              "note": None if ids else "vqav2 holds VQAv2 and OKVQA (both COCO + short answer); pass --okvqa-ids "
                                       "to separate them", "version": CARVE_VERSION}
    (out / "carve_report.json").write_text(json.dumps(report, indent=2))
    return report


def _bar(total: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="B", unit_scale=True, dynamic_ncols=True)


def format_report(report: dict[str, Any]) -> str:
    """The counts as an aligned table (what the command prints)."""
    lines = [f"{report['records']}: {report['total']:,} records"]
    for source, n in report["counts"].items():
        lines.append(f"  {source:<16}{n:>10,}  {100 * n / max(report['total'], 1):5.1f}%")
    for reason, n in (report.get("rejected") or {}).items():
        lines.append(f"  rejected: {n:,} records ({reason}), listed in {report['rejects_file']}")
    for prefix, n in report["unknown_prefix"].items():
        lines.append(f"  (unknown image folder {prefix!r}: {n:,} records, classified like COCO)")
    if report.get("note"):
        lines.append(f"  note: {report['note']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("records", help="the 665K mixture (JSON list or JSONL)")
    parser.add_argument("out_dir")
    parser.add_argument("--okvqa-ids", help="a file with one OKVQA record id per line")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    ids = Path(args.okvqa_ids).read_text().split() if args.okvqa_ids else None
    print(format_report(carve(args.records, args.out_dir, ids, progress=not args.no_progress)))


if __name__ == "__main__":
    main()
