"""Evaluation: the LLaVA-1.5 benchmarks (tasks, one file per benchmark family), their files and answer files (files),
batched inference in Lightning's predict loop (inference), the entry point `runner.evaluate`, and the official scoring
rules (scoring). Checkpoints are read by lmm.model.io.load_checkpoint."""
