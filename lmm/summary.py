"""The short table a run ends with: what each stage trained and how long it took, and every benchmark's headline."""

from __future__ import annotations

from typing import Any


def _loss_span(losses: list[list[float]]) -> str:
    """First and last logged loss, each the mean of up to 10 steps (one step's loss is noisy)."""
    values = [v for _, v in losses]
    if not values:
        return "-"
    k = min(10, len(values))
    return f"{sum(values[:k]) / k:.3f} -> {sum(values[-k:]) / k:.3f}"


def format_run_summary(results: dict[str, Any]) -> str:
    """Plain-text table of results.json: one row per stage (steps, samples, loss, seconds), one per benchmark."""
    rows: list[tuple[str, str, str]] = []
    for name, stage in results.get("stages", {}).items():
        trained = stage.get("trained") or {}
        samples = trained.get("samples")
        what = f"{stage.get('global_step', '?')} steps" + (f", {samples:,} samples" if samples is not None else "")
        rows.append((name, what, f"loss {_loss_span(stage.get('losses') or [])}, {stage.get('seconds', '?')} s"))
    for bench, entry in (results.get("eval") or {}).get("benchmarks", {}).items():
        metric = entry.get("headline_metric") or "score"
        headline = entry.get("headline")
        value = "-" if headline is None else f"{headline:.2f}"
        rows.append((bench, f"{metric} = {value}", f"{entry.get('num_questions', '?')} questions"))
    if not rows:
        return ""
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    rule = "-" * max(len(line) for line in lines)
    return "\n".join([rule, *lines, rule])
