"""Run by tests/data/test_shard_runs.py under ``torchrun --nproc_per_node 2`` (gloo): what each
process of a job does with the data layer, written to OUT/rank<r>.json.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/data/dist_probe.py FOLDERS BROKEN SHARDS OUT

* FOLDERS (a class-folder tree with train/ and val/): ``index_splits`` with ``os.scandir`` counted,
  so the test sees which process listed directories and what every process got;
* BROKEN (a tree whose train split has an empty class folder): the error every process raises;
* SHARDS (a shard folder): ``train.build_data`` with ``data_format: webdataset``, 2 loader workers,
  one epoch of the training stream and one pass over the val stream, each image recorded by a digest
  of its pixels (the transform), so the test can tell which process read which image.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image


def digest(image: Image.Image) -> torch.Tensor:
    """A 63-bit digest of the decoded pixels: identifies the image, whichever process read it."""
    value = int.from_bytes(hashlib.sha256(np.asarray(image).tobytes()).digest()[:8], "little") >> 1
    return torch.tensor(value, dtype=torch.int64)


def main(folders: Path, broken: Path, shards: Path, out: Path) -> None:
    from conformer_vision.config import Config
    from conformer_vision.data.index import index_splits
    from conformer_vision.distributed import init_distributed
    from conformer_vision.errors import DataError
    from conformer_vision.train import build_data

    info = init_distributed(torch.device("cpu"))
    record: dict[str, object] = {"rank": info.rank, "world_size": info.world_size}

    listed: list[str] = []
    scandir = os.scandir

    def counting_scandir(path: object = ".") -> object:
        listed.append(os.fspath(path))
        return scandir(path)

    os.scandir = counting_scandir  # type: ignore[assignment]
    try:
        train, val = index_splits(folders / "train", [folders / "val"])
        try:
            index_splits(broken / "train", [broken / "val"])
            record["broken"] = "no error"
        except DataError as err:
            record["broken"] = str(err)
    finally:
        os.scandir = scandir  # type: ignore[assignment]
    record.update(
        listed=len(listed),
        train=[train.path(i) for i in range(len(train))],
        train_labels=train.labels.tolist(),
        val=[val.path(i) for i in range(len(val))],
        classes=train.classes,
    )

    cfg = Config(
        data_format="webdataset",
        data_url=str(shards),
        num_classes=len(train.classes),
        image_size=32,
        batch_size=8,
        num_parallel_workers=2,
        device_target="cpu",
        seed=3,
    )
    data = build_data(cfg, info)
    for loader in (data.train_loader, data.val_loader.loader):
        loader.dataset.transform = digest
    data.train_loader.dataset.set_epoch(1)
    record["train_digests"] = [int(x) for images, _ in data.train_loader for x in images]
    record["val_digests"] = [int(x) for images, _ in data.val_loader for x in images]
    record["steps_per_epoch"] = data.steps_per_epoch
    (out / f"rank{info.rank}.json").write_text(json.dumps(record))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*(Path(arg) for arg in sys.argv[1:5]))
