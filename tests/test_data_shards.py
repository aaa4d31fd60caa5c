"""The lmm shard format: lossless conversion, streamed input, resumable conversion, remote (fsspec) reading."""

from __future__ import annotations

import json

import fsspec
import pytest

from lmm.data.records import iter_raw_records, load_records
from lmm.data.shards import ShardReader, convert
from lmm.data.synthetic import write_source


@pytest.fixture
def source(tmp_path):
    return write_source(tmp_path / "src", "mix", 60, image_fraction=0.7, seed=4)


def _samples(reader: ShardReader):
    return [reader.record(i) for i in range(len(reader))]


def test_conversion_round_trips_records_and_image_bytes(source, tmp_path):
    records, root = source
    index = convert(records, root, tmp_path / "out", shard_samples=16, progress=False)
    reader = ShardReader(tmp_path / "out")
    originals = load_records(records)
    assert index["num_samples"] == len(reader) == 60 and len(index["shards"]) == 4
    for orig, (rec, image) in zip(originals, _samples(reader), strict=True):
        assert rec == orig
        assert image == ((root / orig.image).read_bytes() if orig.image else None)
    assert reader.has_image.tolist() == [r.image is not None for r in originals]
    assert reader.words.tolist() == [sum(len(t.value.split()) for t in r.conversations) for r in originals]
    again = convert(records, root, tmp_path / "out", progress=True)  # finished: returned as is, not redone
    assert again == index


def test_jsonl_input_gives_the_same_shards(source, tmp_path):
    records, root = source
    jsonl = records.with_suffix(".jsonl")
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in json.loads(records.read_text())))
    convert(records, root, tmp_path / "a", progress=False)
    convert(jsonl, root, tmp_path / "b", progress=False)
    assert _samples(ShardReader(tmp_path / "a")) == _samples(ShardReader(tmp_path / "b"))


def test_interrupted_conversion_resumes_to_the_same_result(source, tmp_path):
    records, root = source
    convert(records, root, tmp_path / "whole", shard_samples=8, progress=False)

    def stop_after_three(k: int) -> None:
        if k == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(records, root, tmp_path / "cut", shard_samples=8, progress=False, on_shard=stop_after_three)
    assert not (tmp_path / "cut" / "index.json").exists()
    assert json.loads((tmp_path / "cut" / "progress.json").read_text())["consumed"] == 24
    written = []
    convert(records, root, tmp_path / "cut", shard_samples=8, progress=False, on_shard=written.append)
    assert written == [3, 4, 5, 6, 7]  # the first three shards were not redone
    for k in range(8):
        name = f"shard-{k:05d}.bin"
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert (tmp_path / "cut" / "meta.npy").read_bytes() == (tmp_path / "whole" / "meta.npy").read_bytes()


def test_remote_shards_are_fetched_into_a_bounded_cache(source, tmp_path):
    records, root = source
    convert(records, root, tmp_path / "out", shard_samples=10, progress=False)
    fs = fsspec.filesystem("memory")
    for f in (tmp_path / "out").iterdir():
        fs.pipe(f"/bucket/mix/{f.name}", f.read_bytes())
    shard_size = (tmp_path / "out" / "shard-00000.bin").stat().st_size
    cache = tmp_path / "cache"
    remote = ShardReader("memory://bucket/mix", cache_dir=cache, max_cache_bytes=2 * shard_size + 100)
    assert _samples(remote) == _samples(ShardReader(tmp_path / "out"))
    cached = list(cache.rglob("shard-*.bin"))
    assert 1 <= len(cached) <= 2  # 6 shards streamed through a cache of 2


def test_streaming_json_reader_handles_chunk_boundaries(tmp_path):
    items = [{"id": i, "text": "x" * (i * 7 % 90), "n": [i, i / 3]} for i in range(300)]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(items, indent=1))
    for chunk in (5, 64, 1 << 20):
        assert [obj for _, obj, _ in iter_raw_records(path, chunk_chars=chunk)] == items


@pytest.mark.parametrize(("change", "said"), [({"verify_images": "decode"}, "verify_images 'header' -> 'decode'"),
                                              ({"shard_bytes": 1 << 30}, "shard_bytes"),
                                              ({"shard_samples": 5}, "shard_samples 8 -> 5")])
def test_resume_with_other_shard_settings_starts_afresh(source, tmp_path, capsys, change, said):
    """Shards of an interrupted conversion are only reused under the settings that wrote them."""
    records, root = source

    def stop_after_two(k: int) -> None:
        if k == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        convert(records, root, tmp_path / "cut", shard_samples=8, progress=False, on_shard=stop_after_two)
    capsys.readouterr()
    settings = {"shard_samples": 8, **change}
    written = []
    index = convert(records, root, tmp_path / "cut", progress=False, on_shard=written.append, **settings)
    message = capsys.readouterr().err
    assert said in message and "2 finished shard(s) are discarded" in message and "starts afresh" in message
    assert written[:2] == [0, 1] and index["num_samples"] == 60  # redone from the first shard
    convert(records, root, tmp_path / "whole", progress=False, **settings)
    for k in range(len(index["shards"])):
        name = f"shard-{k:05d}.bin"
        assert (tmp_path / "cut" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    assert not list((tmp_path / "cut").glob(f"shard-{len(index['shards']):05d}.bin"))


def test_progress_is_counted_in_bytes_and_reaches_the_file_size(tmp_path, monkeypatch):
    """The bar's total is the file size in bytes, so its updates must be bytes too (ShareGPT is not ASCII)."""
    import codecs

    import lmm.data.shards as shards

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
    monkeypatch.setattr(shards, "_progress_bar", Bar)
    convert(path, tmp_path, tmp_path / "out", progress=True)
    (bar,) = bars
    assert bar.total == path.stat().st_size and bar.n == bar.total
    assert len(bar.seen) >= 3 and set(bar.seen[:-1]) <= set(ends)  # on the way: the byte position of a record
