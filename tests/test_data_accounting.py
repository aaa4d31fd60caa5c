"""The accounting reaches the logger (what W&B receives), including the records a lenient conversion skipped."""

from __future__ import annotations

import json

import lightning as L
from lightning.pytorch.loggers import Logger

from lmm.data.args import PolicyArgs, StoreArgs
from lmm.data.datamodule import LlavaDataModule
from lmm.train.accounting import DataAccounting
from lmm.world.noise import write_source
from tests.conftest import BatchConsumer
from tests.synthetic import data_kit


class CapturingLogger(Logger):
    """Keeps every `log_metrics` call, as a W&B or CSV logger would receive it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "capture"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.calls.append((step, dict(metrics)))


def test_accounting_and_conversion_rejects_and_repairs_reach_the_logger(tmp_path):
    kit = data_kit(tmp_path / "kit")
    img, img_root = write_source(tmp_path, "img", 24, image_fraction=1.0, seed=1, turns=(1, 1))
    recs = json.loads(img.read_text())
    recs[3]["image"] = "images/nowhere.png"  # missing image
    recs[7]["conversations"][0]["value"] = recs[7]["conversations"][0]["value"].replace("<image>\n", "")  # 0 <image>
    recs[9]["image"] = "images/gone.png"
    for i in (4, 11):  # a leading gpt turn: dropped (spec §2.3), counted as a repair, not as a reject
        recs[i]["conversations"].insert(0, {"from": "gpt", "value": "Hi! Ask me anything."})
    img.write_text(json.dumps(recs))
    txt, txt_root = write_source(tmp_path, "txt", 16, image_fraction=0.0, seed=2, turns=(1, 1))
    sources = [{"name": "img", "records": str(img), "image_root": str(img_root)},
               {"name": "txt", "records": str(txt), "image_root": str(txt_root)}]
    dm = LlavaDataModule(sources, **kit, max_text_length=256, micro_batch_size=4,
                         policy=PolicyArgs(on_error="skip", max_reject_fraction=None),
                         store=StoreArgs(cache_dir=str(tmp_path / "cache"), progress=False),
                         output_dir=tmp_path / "run")
    logger = CapturingLogger()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=4, logger=logger, log_every_n_steps=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[DataAccounting("instruct", log_every_n_steps=1)])
    trainer.fit(BatchConsumer(), datamodule=dm)
    logged = [m for _, m in logger.calls if any(k.startswith("instruct/data/") for k in m)]
    assert len(logged) >= 3
    last = logged[-1]
    assert last["instruct/data/img/rejected_at_conversion"] == 3
    assert last["instruct/data/img/rejected_at_conversion/missing_image"] == 2
    assert last["instruct/data/img/rejected_at_conversion/image_placeholders"] == 1
    assert last["instruct/data/txt/rejected_at_conversion"] == 0
    assert last["instruct/data/rejected_at_conversion"] == 3
    assert last["instruct/data/img/repaired_at_conversion"] == 2
    assert last["instruct/data/img/repaired_at_conversion/dropped_first_turn_not_human"] == 2
    assert last["instruct/data/txt/repaired_at_conversion"] == 0
    assert last["instruct/data/repaired_at_conversion"] == 2
    assert last["instruct/data/img/samples"] + last["instruct/data/txt/samples"] == 16  # 4 steps of 4 samples
    assert last["instruct/data/rejected"] == 0 and "instruct/data/pad_fraction" in last
    counts = [m["instruct/data/img/samples"] + m["instruct/data/txt/samples"] for m in logged]
    assert counts == sorted(counts) and counts[0] < counts[-1]  # cumulative, logged as training goes
