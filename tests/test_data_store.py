"""A store (a converted source): its litdata parts read back losslessly, streamed input, resumable conversion,
remote reading, stores of another format version refused."""

from __future__ import annotations

import json
import pickle
import shutil
import threading

import pytest

from lmm.data.records import RecordError, iter_raw_records, load_records
from lmm.data.sources.convert import convert
from lmm.data.sources.store import StoreReader
from lmm.world.noise import write_source
from tests.synthetic import lmm_messages


@pytest.fixture
def source(tmp_path):
    return write_source(tmp_path / "src", "mix", 60, image_fraction=0.7, seed=4)


def _samples(reader: StoreReader):
    return [reader.record(i) for i in range(len(reader))]


def _same_parts(a, b, parts: int) -> None:
    """Two conversions wrote the same parts: litdata's chunk files byte for byte, its indexes but for their time."""
    for k in range(parts):
        name = f"part-{k:05d}"
        chunks = sorted(p.name for p in (a / name).iterdir())
        assert chunks == sorted(p.name for p in (b / name).iterdir()) and "index.json" in chunks
        for f in chunks:
            if f == "index.json":
                x, y = (json.loads((d / name / f).read_text()) for d in (a, b))
                assert {**x, "updated_at": None} == {**y, "updated_at": None}
            else:
                assert (a / name / f).read_bytes() == (b / name / f).read_bytes()
    assert not (a / f"part-{parts:05d}").exists() and not (b / f"part-{parts:05d}").exists()
    assert (a / "meta.npy").read_bytes() == (b / "meta.npy").read_bytes()


def test_conversion_round_trips_records_and_image_bytes(source, tmp_path):
    records, root = source
    index = convert(records, root, tmp_path / "out", part_samples=16, progress=False)
    reader = StoreReader(tmp_path / "out")
    originals = load_records(records)
    assert index["num_samples"] == len(reader) == 60 and [p["num_samples"] for p in index["parts"]] == [16] * 3 + [12]
    for orig, (rec, image) in zip(originals, _samples(reader), strict=True):
        assert rec == orig
        assert image == ((root / orig.image).read_bytes() if orig.image else None)
    assert reader.has_image.tolist() == [r.image is not None for r in originals]
    assert reader.words.tolist() == [sum(len(t.value.split()) for t in r.conversations) for r in originals]
    assert reader.part_path(17) == f"{tmp_path / 'out'}/part-00001"
    again = convert(records, root, tmp_path / "out", progress=True)  # finished: returned as is, not redone
    assert again == index
    # each part is a plain litdata dataset; the reader survives pickling into a dataloader worker
    from litdata import StreamingDataset

    part = StreamingDataset(str(tmp_path / "out" / "part-00001"))
    assert json.loads(part[0]["record"])["id"] == originals[16].id and len(part) == 16
    assert _samples(pickle.loads(pickle.dumps(reader))) == _samples(reader)


def test_open_parts_are_bounded(source, tmp_path):
    """Reading every part keeps at most max_open_parts of them open: file descriptors do not grow with the data."""
    import os

    records, root = source
    convert(records, root, tmp_path / "out", part_samples=8, chunk_bytes=1 << 16, progress=False)
    reader = StoreReader(tmp_path / "out", max_open_parts=2)
    fds = lambda: len(os.listdir("/proc/self/fd"))  # noqa: E731
    expected = _samples(StoreReader(tmp_path / "out"))
    before = fds()
    assert [reader.record(i) for i in range(len(reader))] == expected  # 8 parts, in turn
    assert list(reader._parts) == [6, 7] and fds() - before <= 2 * max(p["chunks"] for p in reader.index["parts"])
    assert reader.record(0) == expected[0] and list(reader._parts) == [7, 0]


def test_jsonl_input_gives_the_same_samples(source, tmp_path):
    records, root = source
    jsonl = records.with_suffix(".jsonl")
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in json.loads(records.read_text())))
    convert(records, root, tmp_path / "a", progress=False)
    convert(jsonl, root, tmp_path / "b", progress=False)
    assert _samples(StoreReader(tmp_path / "a")) == _samples(StoreReader(tmp_path / "b"))


def test_interrupted_conversion_resumes_to_the_same_result(source, tmp_path):
    records, root = source
    convert(records, root, tmp_path / "whole", part_samples=8, progress=False)

    def stop_after_three(k: int) -> None:
        if k == 2:
            raise KeyboardInterrupt

    cut = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        convert(records, root, cut, part_samples=8, progress=False, on_part=stop_after_three)
    assert not (cut / "index.json").exists()
    assert json.loads((cut / "progress.json").read_text())["consumed"] == 24
    # what a kill leaves besides: a part litdata was still writing, a part renamed before progress.json said so
    shutil.copytree(cut / "part-00002", cut / ".part-00003.tmp")
    shutil.copytree(cut / "part-00001", cut / "part-00003")
    written = []
    convert(records, root, cut, part_samples=8, progress=False, on_part=written.append)
    assert written == [3, 4, 5, 6, 7]  # the first three parts were not redone
    _same_parts(cut, tmp_path / "whole", 8)
    assert not list(cut.glob(".part-*")) and not (cut / "progress.json").exists()
    assert _samples(StoreReader(cut)) == _samples(StoreReader(tmp_path / "whole"))


def test_conversion_killed_before_its_index_finishes_on_rerun(source, tmp_path, monkeypatch):
    """All parts written, meta.npy too, index.json not yet: the rerun finishes from the parts, redoing none."""
    import lmm.data.sources.convert as converter

    records, root = source
    convert(records, root, tmp_path / "whole", part_samples=16, progress=False)
    join = converter.join_parts

    def join_then_die(out, parts):
        join(out, parts)
        raise KeyboardInterrupt

    monkeypatch.setattr(converter, "join_parts", join_then_die)
    with pytest.raises(KeyboardInterrupt):
        convert(records, root, tmp_path / "cut", part_samples=16, progress=False)
    monkeypatch.setattr(converter, "join_parts", join)
    written = []
    index = convert(records, root, tmp_path / "cut", part_samples=16, progress=False, on_part=written.append)
    assert written == [] and index["num_samples"] == 60
    _same_parts(tmp_path / "cut", tmp_path / "whole", 4)
    assert not list((tmp_path / "cut").rglob("lmm-meta.npy"))


def test_remote_folder_is_streamed_through_litdata(source, tmp_path):
    """litdata cannot read fsspec's memory://, so a remote store is stood in for by litdata's `local:` scheme: the
    same remote code path (download of the indexes, chunks fetched into the cache), minus the network."""
    records, root = source
    convert(records, root, tmp_path / "out", part_samples=10, progress=False)
    shutil.copytree(tmp_path / "out", tmp_path / "bucket" / "mix")
    cache = tmp_path / "cache"
    remote = StoreReader(f"local:{tmp_path / 'bucket' / 'mix'}", cache_dir=cache)
    assert remote.remote and len(remote) == 60
    assert _samples(remote) == _samples(StoreReader(tmp_path / "out"))
    assert _samples(pickle.loads(pickle.dumps(remote))) == _samples(remote)
    assert {p.name for p in cache.rglob("chunk-*.bin")} == {p.name for p in (tmp_path / "out").rglob("chunk-*.bin")}
    assert (remote.local / "meta.npy").exists() and (remote.local / "index.json").exists()
    with pytest.raises(FileNotFoundError, match="no index.json"):
        StoreReader(f"local:{tmp_path / 'bucket' / 'none'}", cache_dir=cache)
    with pytest.raises(ValueError, match="litdata cannot stream this URL"):
        StoreReader("memory://bucket/mix", cache_dir=cache)


def test_conversion_inside_a_distributed_job_writes_one_process_dataset(source, tmp_path, monkeypatch):
    """Under DDP or torchrun litdata's writer would take the rank for itself and wait in merge() for one index per
    rank: the converter pins it to a single process (it runs on one rank, under a lock)."""
    import torch.distributed as dist

    records, root = source
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist, "get_rank", lambda *a: 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("GLOBAL_RANK", "1")
    done = []
    job = threading.Thread(target=lambda: done.append(convert(records, root, tmp_path / "ddp", progress=False)),
                           daemon=True)
    job.start()
    job.join(timeout=120)
    assert done and done[0]["num_samples"] == 60
    assert sorted(p.name for p in (tmp_path / "ddp" / "part-00000").iterdir()) == ["chunk-0-0.bin", "index.json"]
    assert [r.id for r, _ in _samples(StoreReader(tmp_path / "ddp"))] == [r.id for r in load_records(records)]


def test_streaming_json_reader_handles_chunk_boundaries(tmp_path):
    items = [{"id": i, "text": "x" * (i * 7 % 90), "n": [i, i / 3]} for i in range(300)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(items, indent=1))
    for chunk in (5, 64, 1 << 20):
        assert [obj for _, obj, _ in iter_raw_records(path, chunk_chars=chunk)] == items


@pytest.mark.parametrize(("change", "said"), [({"verify_images": "decode"}, "verify_images 'header' -> 'decode'"),
                                              ({"chunk_bytes": 1 << 15}, "chunk_bytes 67108864 -> 32768"),
                                              ({"part_samples": 5}, "part_samples 8 -> 5")])
def test_resume_with_other_part_settings_starts_afresh(source, tmp_path, change, said):
    """Parts of an interrupted conversion are only reused under the settings that wrote them."""
    records, root = source

    def stop_after_two(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(records, root, tmp_path / "cut", part_samples=8, progress=False, on_part=stop_after_two)
    settings = {"part_samples": 8, **change}
    written = []
    with lmm_messages() as messages:
        index = convert(records, root, tmp_path / "cut", progress=False, on_part=written.append, **settings)
    message = "\n".join(messages)
    assert said in message and "2 finished part(s) are discarded" in message and "starts afresh" in message
    assert written[:2] == [0, 1] and index["num_samples"] == 60  # redone from the first part
    convert(records, root, tmp_path / "whole", progress=False, **settings)
    _same_parts(tmp_path / "cut", tmp_path / "whole", len(index["parts"]))


def test_progress_is_counted_in_bytes_and_reaches_the_file_size(tmp_path, monkeypatch):
    """The bar's total is the file size in bytes, so its updates must be bytes too (ShareGPT is not ASCII)."""
    import codecs

    import lmm.data.sources.convert as converter

    records = [{"id": f"zh-{i}", "conversations": [{"from": "human", "value": "你好，请介绍一下自己。" * (i % 5 + 1)},
                                                   {"from": "gpt", "value": "Ça va — très bien, merci ☺ " * 40}]}
               for i in range(1500)]  # 2.6 MB: the converter updates its bar every MB
    path = tmp_path / "sharegpt.jsonl"
    lines = [json.dumps(r, ensure_ascii=False) + "\r\n" for r in records]
    path.write_bytes(codecs.BOM_UTF8 + "".join(lines).encode())
    ends = [len(codecs.BOM_UTF8) + len("".join(lines[:k + 1]).encode()) - 2 for k in range(len(lines))]
    for chunk in (7, 1000, 1 << 20):
        assert [n for _, _, n in iter_raw_records(path, chunk_chars=chunk)] == ends

    class Bar:
        def __init__(self, total, *args):
            self.total, self.n, self.seen = total, 0, []
            bars.append(self)

        def update(self, k):
            self.n += k
            self.seen.append(self.n)

        def close(self):
            pass

    bars: list[Bar] = []
    monkeypatch.setattr(converter, "_progress_bar", Bar)
    convert(path, tmp_path, tmp_path / "out", progress=True)
    (bar,) = bars
    assert bar.total == path.stat().st_size and bar.n == bar.total
    assert len(bar.seen) >= 3 and set(bar.seen[:-1]) <= set(ends)  # on the way: the byte position of a record


def test_a_store_of_another_format_version_is_converted_anew_or_refused(source, tmp_path, monkeypatch):
    """A store made by another format version may hold other records (v2 rejected a record whose first turn is from
    gpt; v3 repairs and keeps it): the version is part of the cache key, so a cached store is converted anew rather
    than reused, and a folder given by path is refused rather than read."""
    import lmm.data.sources.convert as converter

    records, root = source
    current = converter.default_store_dir(tmp_path / "cache", "mix", records, root)
    monkeypatch.setattr(converter, "FORMAT_VERSION", converter.FORMAT_VERSION - 1)
    older = converter.default_store_dir(tmp_path / "cache", "mix", records, root)
    convert(records, root, older, progress=False)
    monkeypatch.undo()
    assert older != current
    with pytest.raises(RecordError, match="made by another version of lmm"):
        convert(records, root, older, progress=False)
    with pytest.raises(ValueError, match=f"not an lmm-litdata v{converter.FORMAT_VERSION} store"):
        StoreReader(older)
