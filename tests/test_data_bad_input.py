"""Bad input never stops a run silently nor loses data silently: every case is a clear error naming file, record id
and reason (strict, on_error=error) or a counted skip written with its reason to the rejects file (lenient)."""

from __future__ import annotations

import json

import pytest

from lmm.data.args import LoaderArgs, MixtureArgs, PolicyArgs, StoreArgs
from lmm.data.datamodule import LlavaDataModule
from lmm.data.records import RecordError
from lmm.data.rejects import SampleError
from lmm.data.sources.convert import convert
from lmm.data.sources.store import StoreReader
from lmm.world.noise import write_source
from tests.synthetic import data_kit


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    return data_kit(tmp_path_factory.mktemp("kit"))


def _turns(*values, roles=None):
    roles = roles or ["human" if k % 2 == 0 else "gpt" for k in range(len(values))]
    return [{"from": r, "value": v} for r, v in zip(roles, values, strict=True)]


# (record id, record patch, reason the message must give, countable kind)
CONVERSION_CASES = [
    ("missing-image", {"image": "images/nowhere.png"}, "image file not found", "missing image"),
    ("corrupt-image", {"image": "images/garbage.png"}, "cannot read image", "corrupt image"),
    ("no-placeholder", {"conversations": _turns("What colour?", "red")}, "found 0", "image placeholders"),
    ("two-placeholders", {"conversations": _turns("<image> <image> What?", "red")}, "found 2", "image placeholders"),
    ("not-alternating", {"conversations": _turns("<image>\nA?", "B?", roles=["human", "human"])},
     "must alternate", "malformed conversation"),
    ("empty-turn", {"conversations": _turns("<image>\nWhat?", "  ")}, "empty value", "malformed conversation"),
    # a first turn from gpt is dropped (spec §2.3); what is left is validated, and a rejection says it was repaired
    ("gpt-only", {"conversations": _turns("<image>\nHi.", roles=["gpt"])},
     "empty 'conversations' (after LLaVA's repair: dropped turn 0 (from 'gpt')", "malformed conversation"),
    ("two-gpt-first", {"conversations": _turns("Hi.", "Hello.", "<image>\nWhat?", "red",
                                               roles=["gpt", "gpt", "human", "gpt"])},
     "first turn must be from 'human', got 'gpt' (after LLaVA's repair", "malformed conversation"),
    ("image-in-dropped-turn", {"conversations": _turns("<image>\nHi.", "What?", "red", roles=["gpt", "human", "gpt"])},
     "found 0 (after LLaVA's repair", "image placeholders"),
    ("escapes-root", {"image": "../outside.png"}, "escapes the image root", "image path outside root"),
]


def _source_with(tmp_path, rid, patch):
    records, root = write_source(tmp_path, "src", 12, image_fraction=1.0, seed=1, turns=(1, 1))
    (root / "images" / "garbage.png").write_bytes(b"this is not a png")
    (tmp_path / "outside.png").write_bytes((root / "images" / "src_000000.png").read_bytes())
    recs = json.loads(records.read_text())
    recs[5] = {**recs[5], "id": rid, **patch}
    records.write_text(json.dumps(recs))
    return records, root


@pytest.mark.parametrize(("rid", "patch", "reason", "kind"), CONVERSION_CASES, ids=[c[0] for c in CONVERSION_CASES])
def test_bad_records_at_conversion(tmp_path, rid, patch, reason, kind):
    records, root = _source_with(tmp_path, rid, patch)
    with pytest.raises(RecordError) as err:
        convert(records, root, tmp_path / "strict", progress=False)
    message = str(err.value)
    assert str(records) in message and f"id {rid!r}" in message and "record 5" in message and reason in message
    index = convert(records, root, tmp_path / "lenient", on_error="skip", progress=False)
    assert index["num_samples"] == 11 and index["rejected"] == 1 and index["rejected_by_reason"] == {kind: 1}
    (line,) = (tmp_path / "lenient" / "rejects.jsonl").read_text().splitlines()
    entry = json.loads(line)
    assert entry["id"] == rid and entry["record"] == 5 and reason in entry["reason"] and entry["file"] == str(records)


def _gpt_first(records, ids):
    """Records `ids` get a leading gpt turn (as some of LLaVA's data has); returns their conversations without it."""
    recs = json.loads(records.read_text())
    kept = {}
    for i in ids:
        kept[recs[i]["id"]] = [dict(t) for t in recs[i]["conversations"]]
        recs[i]["conversations"].insert(0, {"from": "gpt", "value": f"Hello {i}, what do you want to know?"})
    records.write_text(json.dumps(recs))
    return kept


@pytest.mark.parametrize("on_error", ["error", "skip"])
def test_a_first_turn_from_gpt_is_dropped_and_counted_as_a_repair(tmp_path, on_error):
    records, root = write_source(tmp_path, "src", 12, image_fraction=1.0, seed=1, turns=(1, 2))
    expected = _gpt_first(records, [2, 5])
    index = convert(records, root, tmp_path / "out", on_error=on_error, progress=False)
    assert index["num_samples"] == 12 and index["rejected"] == 0 and index["rejected_by_reason"] == {}
    assert index["repaired"] == 2 and index["repaired_by_reason"] == {"dropped first turn not human": 2}
    assert not (tmp_path / "out" / "rejects.jsonl").exists()
    stored = {rec.id: rec for rec, _ in (StoreReader(tmp_path / "out").record(i) for i in range(12))}
    for rid, turns in expected.items():
        assert [{"from": t.role, "value": t.value} for t in stored[rid].conversations] == turns
    lines = [json.loads(x) for x in (tmp_path / "out" / "repairs.jsonl").read_text().splitlines()]
    assert [(x["record"], x["id"], x["kind"]) for x in lines] == [(i, f"src-{i}", "dropped first turn not human")
                                                                  for i in (2, 5)]
    assert "turn 0 (from 'gpt')" in lines[0]["detail"]


def test_interrupted_conversion_counts_each_repair_once(tmp_path):
    records, root = write_source(tmp_path, "src", 24, image_fraction=0.5, seed=2, turns=(1, 1))
    _gpt_first(records, [1, 9, 20])

    def stop_after_two(k):
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(records, root, tmp_path / "cut", part_samples=8, progress=False, on_part=stop_after_two)
    with open(tmp_path / "cut" / "repairs.jsonl", "a") as fh:  # written after the last finished part: dropped
        fh.write(json.dumps({"record": 20, "id": "src-20"}) + "\n")
    index = convert(records, root, tmp_path / "cut", part_samples=8, progress=False)
    assert index["repaired"] == 3 and index["repaired_by_reason"] == {"dropped first turn not human": 3}
    ids = [json.loads(x)["id"] for x in (tmp_path / "cut" / "repairs.jsonl").read_text().splitlines()]
    assert ids == ["src-1", "src-9", "src-20"]


def test_many_gpt_first_records_do_not_stop_a_lenient_run(kit, tmp_path):
    """Half the records start with a gpt turn: dropped and trained on, not rejected, so neither the conversion
    check nor the load-time check of max_reject_fraction stops the run."""
    import lightning as L

    from lmm.train.accounting import DataAccounting
    from tests.conftest import BatchConsumer

    records, root = write_source(tmp_path, "src", 24, image_fraction=1.0, seed=1, turns=(1, 1))
    _gpt_first(records, range(0, 24, 2))
    dm = _module(kit, records, root, tmp_path, on_error="skip", max_reject_fraction=0.05, output_dir=tmp_path / "run")
    accounting = DataAccounting("instruct", min_samples_for_check=8)
    trainer = L.Trainer(max_steps=6, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[accounting])
    trainer.fit(BatchConsumer(), datamodule=dm)
    assert dm.conversion_rejects() == {"src": 0}
    metrics = accounting.metrics()
    assert metrics["instruct/data/src/samples"] == 24 and metrics["instruct/data/rejected"] == 0
    assert metrics["instruct/data/src/repaired_at_conversion/dropped_first_turn_not_human"] == 12
    assert metrics["instruct/data/rejected_at_conversion"] == 0


def _module(kit, records, root, tmp_path, max_text_length=256, num_workers=0, output_dir=None, **policy):
    # one bad record in a dozen is far above the default max_reject_fraction: these tests look at single records
    policy = {"max_reject_fraction": None, **policy}
    return LlavaDataModule([{"name": "src", "records": str(records), "image_root": str(root)}], **kit,
                           max_text_length=max_text_length, micro_batch_size=4, output_dir=output_dir,
                           mixture=MixtureArgs(shuffle=False), loader=LoaderArgs(num_workers=num_workers),
                           policy=PolicyArgs(**policy), store=StoreArgs(cache_dir=str(tmp_path / "cache"),
                                                                        progress=False))


def _truncated_png(records, root):
    """Sample 5's image keeps a valid header but loses its data: it passes a header check, fails to decode."""
    recs = json.loads(records.read_text())
    path = root / recs[5]["image"]
    path.write_bytes(path.read_bytes()[:60])
    return recs[5]["id"]


@pytest.mark.parametrize("workers", [0, 2])
def test_corrupt_image_found_while_loading(kit, tmp_path, workers):
    records, root = write_source(tmp_path, "src", 12, image_fraction=1.0, seed=1, turns=(1, 1))
    rid = _truncated_png(records, root)
    with pytest.raises(SampleError) as err:
        list(_module(kit, records, root, tmp_path, num_workers=workers).train_dataloader())
    message = str(err.value)
    assert str(records) in message and "part-00000" in message and rid in message and "cannot be decoded" in \
        message
    out = tmp_path / "run"
    batches = list(_module(kit, records, root, tmp_path, num_workers=workers, on_error="skip", output_dir=out)
                   .train_dataloader())
    assert sum(len(b["rejected"]) for b in batches) == 1 and sum(len(b["ids"]) for b in batches) == 11
    (line,) = (out / "rejects.jsonl").read_text().splitlines()
    assert json.loads(line)["id"] == rid and json.loads(line)["kind"] == "corrupt image"


def test_sample_longer_than_the_context(kit, tmp_path):
    records, root = write_source(tmp_path, "src", 8, image_fraction=0.0, seed=2, turns=(1, 1), words=(3, 4))
    recs = json.loads(records.read_text())
    recs[2]["conversations"][1]["value"] = " ".join(["red circle"] * 200)
    records.write_text(json.dumps(recs))
    with pytest.raises(SampleError, match=r"src-2.*longer than the context: \d+ text tokens > 120"):
        list(_module(kit, records, root, tmp_path, max_text_length=120).train_dataloader())
    dm = _module(kit, records, root, tmp_path, max_text_length=120, on_error="skip", output_dir=tmp_path / "run")
    batches = list(dm.train_dataloader())
    assert [k for b in batches for k in b["rejected"]] == ["too long"]
    assert "longer than the context" in (tmp_path / "run" / "rejects.jsonl").read_text()
    cut = list(_module(kit, records, root, tmp_path, max_text_length=120, truncate=True).train_dataloader())
    assert sum(int(b["truncated"].sum()) for b in cut) == 1 and max(b["input_ids"].shape[1] for b in cut) == 120


def test_all_rejected_micro_batch_still_yields_a_step(kit, tmp_path):
    records, root = write_source(tmp_path, "src", 4, image_fraction=0.0, seed=3, turns=(1, 1))
    recs = json.loads(records.read_text())
    for r in recs:
        r["conversations"][1]["value"] = " ".join(["blue square"] * 100)
    records.write_text(json.dumps(recs))
    (batch,) = list(_module(kit, records, root, tmp_path, max_text_length=60, on_error="skip").train_dataloader())
    assert len(batch["rejected"]) == 4 and batch["input_ids"].shape == (1, 1) and batch["sample_tokens"].sum() == 0


def test_strict_run_refuses_a_lenient_conversion(kit, tmp_path):
    records, root = _source_with(tmp_path, "missing-image", {"image": "images/nowhere.png"})
    lenient = _module(kit, records, root, tmp_path, on_error="skip", output_dir=tmp_path / "run")
    lenient.setup()
    assert lenient.conversion_rejects() == {"src": 1}
    assert "missing-image" in (tmp_path / "run" / "rejects-convert-src.jsonl").read_text()
    with pytest.raises(RecordError, match="skipped 1 bad records"):
        _module(kit, records, root, tmp_path).setup()


def test_symlink_inside_the_root_pointing_outside_is_refused(tmp_path):
    """The root check follows symlinks: a link (file or folder) inside the root to a file outside it is refused,
    in strict and lenient conversion alike; links that stay inside, and a root that is itself a link, are fine."""
    records, root = _source_with(tmp_path / "data", "linked-out", {"image": "images/link.png"})
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "x.png").write_bytes((root / "images" / "src_000000.png").read_bytes())
    (root / "images" / "link.png").symlink_to(outside / "x.png")
    with pytest.raises(RecordError, match=r"id 'linked-out'.*escapes the image root .*through a symlink"):
        convert(records, root, tmp_path / "strict", progress=False)
    index = convert(records, root, tmp_path / "lenient", on_error="skip", progress=False)
    assert index["rejected_by_reason"] == {"image path outside root": 1}
    assert "through a symlink" in (tmp_path / "lenient" / "rejects.jsonl").read_text()

    (root / "images" / "folder").symlink_to(outside, target_is_directory=True)
    recs = json.loads(records.read_text())
    recs[5]["image"] = "images/folder/x.png"
    records.write_text(json.dumps(recs))
    with pytest.raises(RecordError, match="through a symlink"):
        convert(records, root, tmp_path / "strict2", progress=False)

    (root / "images" / "inside.png").symlink_to(root / "images" / "src_000000.png")
    recs[5]["image"] = "images/inside.png"
    records.write_text(json.dumps(recs))
    (tmp_path / "root-link").symlink_to(root, target_is_directory=True)
    index = convert(records, tmp_path / "root-link", tmp_path / "ok", progress=False)
    assert index["num_samples"] == 12 and index["rejected"] == 0


def test_a_source_mostly_rejected_at_conversion_stops_a_lenient_run(kit, tmp_path):
    """A wrong image root skips every image: lenient mode is for the odd bad record, not for a broken source."""
    records, root = write_source(tmp_path, "src", 12, image_fraction=1.0, seed=1, turns=(1, 1))
    wrong_root = tmp_path / "elsewhere"
    (wrong_root / "images").mkdir(parents=True)
    with pytest.raises(RecordError, match=r"skipped 12 of 12 records \(100.0% > max_reject_fraction=0.05\)"):
        _module(kit, records, wrong_root, tmp_path, on_error="skip", max_reject_fraction=0.05).setup()
    records, root = _source_with(tmp_path / "one", "missing-image", {"image": "images/nowhere.png"})
    _module(kit, records, root, tmp_path / "one", on_error="skip", max_reject_fraction=0.1).setup()  # 1 of 12 passes


def test_samples_mostly_rejected_at_load_stop_a_lenient_run(kit, tmp_path):
    """Every sample too long for the context (as a template mismatching the tokenizer would be): the run stops
    once enough samples were seen, instead of training on filler rows."""
    import lightning as L

    from lmm.train.accounting import DataAccounting
    from tests.conftest import BatchConsumer

    records, root = write_source(tmp_path, "src", 48, image_fraction=1.0, seed=1, turns=(1, 1))
    dm = _module(kit, records, root, tmp_path, max_text_length=8, on_error="skip", max_reject_fraction=0.05,
                 output_dir=tmp_path / "run")
    trainer = L.Trainer(max_steps=20, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[DataAccounting("instruct", min_samples_for_check=16)])
    with pytest.raises(RuntimeError, match=r"16 of 16 samples were rejected while loading"):
        trainer.fit(BatchConsumer(), datamodule=dm)
