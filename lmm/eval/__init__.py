"""Evaluation: the LLaVA-1.5 benchmarks (benchmarks), batched inference in Lightning's predict loop (inference),
the entry points `runner.evaluate` / `runner.load_checkpoint`, and the official scoring rules (scoring)."""
