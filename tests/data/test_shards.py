"""WebDataset shards (`data.shards`): what `write_shards` writes, the training and evaluation streams
(which process and worker reads what, resume positions, the bad-sample policies), shard URLs
(local, `pipe:`, `http://`, brace patterns) and the errors a user can meet."""

from __future__ import annotations

import functools
import http.server
import json
import logging
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from conformer_vision.cli import main
from conformer_vision.data.datasets import ImageFolderDataset, set_loader_epoch
from conformer_vision.data.shards import SHARDS_INFO, ShardDataset, open_split, write_shards
from conformer_vision.errors import DataError

LOGGER = "conformer_vision.data"


def origin(image: Image.Image) -> torch.Tensor:
    """(class index, image number) that make_tree encoded in pixel (0, 0)."""
    r, g, _ = image.getpixel((0, 0))
    return torch.tensor([r // 20, g])


def items(dataset: ShardDataset, workers: int = 0, batch_size: int = 4) -> list[tuple[int, int, int]]:
    """(class, image number, target) of every item of one pass, in the order the loader gives them."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, drop_last=dataset.training)
    return [(int(x[0]), int(x[1]), int(t)) for images, targets in loader for x, t in zip(images, targets)]


@pytest.fixture
def source(make_tree) -> Path:
    """train: a 13, b 11, c 8 images; val: a 3, c 4 (no b)."""
    make_tree("train", {"a": 13, "b": 11, "c": 8})
    return make_tree("val", {"a": 3, "c": 4}).parent


@pytest.fixture
def shards(source: Path, tmp_path: Path) -> Path:
    write_shards(source, tmp_path / "wds", shard_size=4)
    return tmp_path / "wds"


def split(shards: Path, name: str = "train", pattern: str = ""):
    return open_split(str(shards / SHARDS_INFO), name, pattern)


def test_written_shards_hold_every_image_once_under_its_index(source: Path, shards: Path) -> None:
    info = json.loads((shards / SHARDS_INFO).read_text())
    assert json.loads((shards / "classes.json").read_text()) == info["classes"] == ["a", "b", "c"]
    train = info["splits"]["train"]
    assert [s["count"] for s in train["shards"]] == [4] * 8 and train["num_samples"] == 32
    assert train["class_counts"] == [13, 11, 8] and info["splits"]["val"]["class_counts"] == [3, 0, 4]
    folder = ImageFolderDataset(source / "train")
    with tarfile.open(shards / "train-000003.tar") as tar:
        names = tar.getnames()
        key = names[0].split(".")[0]
        meta = json.loads(tar.extractfile(f"{key}.json").read())
        assert tar.extractfile(f"{key}.png").read() == Path(folder.path(int(key))).read_bytes()  # bytes unchanged
        assert int(tar.extractfile(f"{key}.cls").read()) == folder.target(int(key))
    assert meta["path"] == str(Path(folder.path(int(key))).relative_to(source / "train"))
    assert len(names) == 12 and {n.split(".")[1] for n in names} == {"png", "cls", "json"}
    seen = items(ShardDataset(split(shards), origin, training=False))
    assert sorted(seen) == sorted((c, k, c) for c, n in enumerate((13, 11, 8)) for k in range(n))
    assert sorted(items(ShardDataset(split(shards, "val"), origin, training=False))) == [
        (0, k, 0) for k in range(3)
    ] + [(1, k, 2) for k in range(4)]  # val folder 1 is class c
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    with pytest.raises(DataError, match="already holds shards .*nothing was written"):
        write_shards(source, shards)
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before


@pytest.mark.slow
def test_training_streams_split_the_shards_between_processes_and_workers(shards: Path) -> None:
    """2 processes x 2 loader workers: the 8 shards go 2 to each stream, no image to two processes;
    every process gets steps_per_epoch full batches; the order is a function of (seed, epoch)."""
    train = split(shards)
    per_rank = []
    for rank in (0, 1):
        dataset = ShardDataset(
            train, origin, training=True, batch_size=4, seed=5, rank=rank, world_size=2, num_workers=2
        )
        dataset.set_epoch(1)
        first = items(dataset, workers=2)
        assert dataset.steps_per_epoch == 4 and len(first) == len(dataset) == 16
        assert items(dataset, workers=2) == first  # the same epoch again: the same items
        per_rank.append(first)
    assert not {x[:2] for x in per_rank[0]} & {x[:2] for x in per_rank[1]}
    assert all(c == t for rank in per_rank for c, _, t in rank)
    dataset.set_epoch(2)
    assert items(dataset, workers=2) != per_rank[1]


@pytest.mark.slow
def test_a_resumed_epoch_continues_with_the_same_items(shards: Path) -> None:
    """`skip` samples already trained: the loader yields exactly the rest of the epoch, in order,
    with every image augmented as in the uninterrupted pass (the transform's RNGs are seeded by
    (seed, epoch, image))."""

    def noisy(image: Image.Image) -> torch.Tensor:
        return torch.cat([origin(image).float(), torch.rand(1)])

    dataset = ShardDataset(split(shards), noisy, training=True, batch_size=2, seed=1, num_workers=3)
    loader = DataLoader(dataset, batch_size=2, num_workers=3, drop_last=True)
    set_loader_epoch(loader, 4)
    full = [x for images, _ in loader for x in images]
    assert len(full) == 32 and len({tuple(x[:2].tolist()) for x in full}) > 16
    for done in (1, 5, 15):
        set_loader_epoch(loader, 4)
        dataset.skip = done * 2
        rest = [x for images, _ in loader for x in images]
        assert len(rest) == len(full) - done * 2 and all(torch.equal(a, b) for a, b in zip(rest, full[done * 2 :]))


@pytest.mark.parametrize("kind", ["truncated", "empty", "text"])
def test_unreadable_images_are_replaced_in_training_and_dropped_in_evaluation(
    source: Path, tmp_path: Path, make_bad, caplog, kind
) -> None:
    make_bad(source / "train" / "b" / "003.png", kind)
    make_bad(source / "train" / "a" / "010.png", kind)
    write_shards(source, tmp_path / "wds", shard_size=4)
    train = split(tmp_path / "wds")
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        trained = items(ShardDataset(train, origin, training=True, batch_size=4, max_bad_files=2))
        evaluated = items(ShardDataset(train, origin, training=False, max_bad_files=2))
    assert len(trained) == 32 and (1, 3, 1) not in trained and (0, 10, 0) not in trained
    assert len(evaluated) == 30 and {(1, 3), (0, 10)}.isdisjoint({x[:2] for x in evaluated})
    assert "skipping unreadable image train-" in caplog.text and "(source b/003.png)" in caplog.text
    assert "dropping unreadable image" in caplog.text and "(not counted)" in caplog.text
    dataset = ShardDataset(train, origin, training=False, max_bad_fraction=0.05)  # budget 1 of 32
    with pytest.raises(
        DataError, match=r"2 of 32 \(budget 1: max_bad_files_fraction 0.05.*--max_bad_files_fraction 0.063"
    ):
        items(dataset)
    assert len(dataset.bad_files) == 2 and all(name.startswith("train-0000") for name in dataset.bad_files)


def test_a_bad_image_found_in_a_worker_is_seen_by_the_main_process(source: Path, tmp_path: Path, make_bad) -> None:
    make_bad(source / "train" / "c" / "002.png", "text")
    write_shards(source, tmp_path / "wds", shard_size=4)
    dataset = ShardDataset(split(tmp_path / "wds"), origin, training=False, num_workers=2, max_bad_files=1)
    assert len(items(dataset, workers=2)) == 31
    assert len(dataset.bad_files) == 1 and dataset.bad_files[0].endswith(f"/{26:09d}")  # c/002: 13 a + 11 b + 2


@pytest.fixture
def http_url(shards: Path) -> Iterator[str]:
    """The shard folder served over HTTP by a local server for the test."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shards))
    handler.log_message = lambda *a: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_shards_read_from_pipe_http_and_brace_patterns(shards: Path, http_url: str) -> None:
    local = sorted(items(ShardDataset(split(shards), origin, training=False)))
    piped = split(shards, pattern=f"pipe:cat {shards}/train-{{000000..000007}}.tar")
    assert piped.urls[3] == f"pipe:cat {shards}/train-000003.tar" and piped.counts == (4,) * 8
    assert sorted(items(ShardDataset(piped, origin, training=False, num_workers=2), workers=2)) == local
    half = split(shards, pattern=f"{shards}/train-{{000000..000003}}.tar")
    assert half.counts == (4,) * 4 and len(items(ShardDataset(half, origin, training=False))) == 16
    if shutil.which("curl") is None:
        pytest.skip("curl (webdataset's HTTP reader) is not installed")
    served = open_split(f"{http_url}/{SHARDS_INFO}", "train")
    assert served.urls[0] == f"{http_url}/train-000000.tar"
    assert sorted(items(ShardDataset(served, origin, training=False))) == local


def test_unusable_shards_are_clear_errors(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read the shard description .*conformer prepare shards"):
        open_split(str(tmp_path / "nowhere" / SHARDS_INFO), "train")
    (tmp_path / "other.json").write_text('{"classes": []}')
    with pytest.raises(DataError, match="not a shards.json written by conformer prepare shards"):
        open_split(str(tmp_path / "other.json"), "train")
    with pytest.raises(DataError, match="names none of the shards"):
        split(shards, pattern=f"{shards}/test-{{000000..000001}}.tar")
    with pytest.raises(DataError, match="8 train shard.* 3 process.* x 3 loader stream.*--shard_size"):
        ShardDataset(split(shards), origin, training=True, world_size=3, num_workers=3)
    with pytest.raises(DataError, match=r"class\(es\) \['c'\] that are not in the class list"):
        ShardDataset(split(shards, "val"), origin, training=False, classes=["a", "b"])
    (shards / "train-000005.tar").unlink()
    with pytest.raises(DataError, match="cannot read shard .*train-000005.tar: FileNotFoundError"):
        items(ShardDataset(split(shards), origin, training=False))
    data = (shards / "train-000002.tar").read_bytes()
    (shards / "train-000002.tar").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cannot read shard .*train-000002.tar"):
        items(ShardDataset(split(shards, pattern=f"{shards}/train-000002.tar"), origin, training=False))
    with pytest.raises(DataError, match="cannot read shard pipe:false"):
        items(ShardDataset(split(shards, pattern="pipe:false train-000001.tar"), origin, training=False))


def test_prepare_shards_command(source: Path, tmp_path: Path, capsys) -> None:
    assert main(["prepare", "shards", str(source), str(tmp_path / "out"), "--shard_size", "10"]) == 0
    out = capsys.readouterr().out
    assert "wrote 32 train images in 4 shard(s)" in out and "wrote 7 val images in 1 shard(s)" in out
    assert f"--data_format webdataset --data_url {tmp_path / 'out'}" in out
    assert main(["prepare", "shards", str(source), str(tmp_path / "out")]) == 2
    assert "already holds shards" in capsys.readouterr().err
    assert main(["prepare", "shards", str(source)]) == 2
    assert "usage: conformer prepare shards SRC OUT" in capsys.readouterr().err
    assert main(["prepare", "shards", str(tmp_path / "missing"), str(tmp_path / "o2")]) == 2
    assert "does not exist" in capsys.readouterr().err and not (tmp_path / "o2").exists()
