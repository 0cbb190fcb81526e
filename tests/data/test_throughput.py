"""``conformer benchmark --mode data``: decode + training augmentation per loader worker on real JPEGs."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from conformer_vision.cli import main
from conformer_vision.data.throughput import sample_jpegs


def test_sample_jpegs_are_real_imagenet_sized_jpegs(tmp_path: Path) -> None:
    paths = sample_jpegs(tmp_path, count=6)
    sizes = set()
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB"
            sizes.add(image.size)
    assert sizes == {(500, 375), (375, 500), (500, 333), (400, 400), (500, 400), (333, 500)}
    assert len({p.read_bytes() for p in paths}) == 6


def test_data_mode_times_the_config_training_transform(tmp_path: Path, capsys) -> None:
    out = tmp_path / "data.json"
    code = main(
        [
            "benchmark",
            "--mode",
            "data",
            "--images",
            "6",
            "--loader_workers",
            "0,1",
            "--batch_size",
            "4",
            "--image_size",
            "96",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    result = json.loads(out.read_text())
    assert (
        "auto_augment rand-m9-mstd0.5-inc1" in result["transform"]
        and "random erasing 0.25 pixel" in result["transform"]
    )
    assert result["image_size"] == 96 and result["files"] == 64 and result["per_worker_images_per_s"] > 0
    assert result["decode_s"] > 0 and result["augment_s"] > 0
    assert [r["workers"] for r in result["loaders"]] == [0, 1] and all(r["images_per_s"] > 0 for r in result["loaders"])
    assert "one worker (one thread):" in printed and "num_parallel_workers >= T /" in printed
    assert main(["benchmark", "--mode", "infer"]) == 2
    assert "--arch is required" in capsys.readouterr().err
