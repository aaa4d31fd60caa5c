"""What a user reads in the console: lmm's own lines from rank zero, no third-party chatter, a closing summary."""

from __future__ import annotations

import logging
import warnings

from lmm.summary import format_run_summary


def test_chatter_is_dropped_at_its_source_and_real_messages_still_show(caplog):
    from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn

    from lmm.log import quiet_third_party

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        with caplog.at_level(logging.INFO):
            rank_zero_info("GPU available: False, used: False")
            rank_zero_info("💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]")
            rank_zero_info("`Trainer.fit` stopped: `max_epochs=1` reached.")
            rank_zero_info("Restoring states from the checkpoint path at last.ckpt")
        warnings.warn("Found 103 module(s) in eval mode at the start of training.", UserWarning, stacklevel=1)
        rank_zero_warn("The dataloader does not have many workers which may be a bottleneck.")
    said = [r.getMessage() for r in caplog.records]
    assert said == ["Restoring states from the checkpoint path at last.ckpt"]
    assert [str(w.message) for w in caught] == ["The dataloader does not have many workers which may be a bottleneck."]


def test_lmm_lines_come_from_global_rank_zero_only(monkeypatch, capsys):
    from lightning_utilities.core.rank_zero import rank_zero_only

    from lmm.log import log

    log.info("seen")
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    log.info("not seen on rank 1")
    log.warning("nor this")
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    log.warning("careful")
    assert capsys.readouterr().out.splitlines() == ["[lmm] seen", "[lmm] warning: careful"]


def test_summary_has_a_row_per_stage_and_benchmark():
    losses = [[s, 6.0 - 0.1 * s] for s in range(1, 21)]  # first 10 average 5.45, last 10 average 4.45
    results = {"stages": {"align": {"global_step": 20, "seconds": 3.5, "losses": losses,
                                    "trained": {"samples": 640}}},
               "eval": {"benchmarks": {"tiny_gqa": {"headline_metric": "acc", "headline": 46.0, "num_questions": 50},
                                       "tiny_mme": {"headline_metric": "perception_score", "headline": None,
                                                    "num_questions": 0}}}}
    lines = format_run_summary(results).splitlines()
    assert lines[0] == lines[-1] and set(lines[0]) == {"-"}
    assert lines[1].split() == ["align", "20", "steps,", "640", "samples", "loss", "5.450", "->", "4.450,", "3.5", "s"]
    assert lines[2].split() == ["tiny_gqa", "acc", "=", "46.00", "50", "questions"]
    assert lines[3].split()[:4] == ["tiny_mme", "perception_score", "=", "-"]
    assert format_run_summary({"stages": {}}) == ""
