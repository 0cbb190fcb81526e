#!/usr/bin/env python3
"""Indexing time, index memory and DataLoader-worker memory of a class-folder split at scale:
this package's `ImageFolderDataset` (flat-array index), the data layer before it (`Path` objects
per sample, read from git at --old_ref) and torchvision's `ImageFolder`, on the same tree.

    PYTHONPATH=src python scripts/data_scale_bench.py --tree /tmp/scale --files 200000 --classes 100 --workers 4

The tree (empty `.JPEG` files in class folders) is made when missing. The file cache is warmed by
one untimed scan first. Each implementation is then measured in a fresh Python process:

* indexing: the median wall time of 3 constructions of the dataset;
* index memory: what the constructed dataset holds (tracemalloc: Python objects and numpy buffers);
* workers: a DataLoader with --workers processes (fork), batch 256, shuffled, over a dataset whose
  items are the length of the sample's path (nothing is decoded: the measure is about the index).
  The memory of the main process and of each worker is read from /proc/<pid>/smaps_rollup right
  after the workers start and after one whole epoch: RSS, and the private part (USS, pages the
  process has its own copy of). A forked worker's RSS counts the parent's pages it shares from the
  start, so copy-on-read shows in USS (and PSS), not in RSS.

Prints a Markdown table and, with --json, writes every figure.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
IMPLEMENTATIONS = ("new", "old", "torchvision")
NAMES = {
    "new": "ImageFolderDataset (flat-array index)",
    "old": "ImageFolderDataset before (Path per sample)",
    "torchvision": "torchvision ImageFolder",
}


def make_tree(root: Path, files: int, classes: int) -> None:
    """`classes` folders of empty `.JPEG` files (ImageNet-like names), unless the tree is there."""
    marker = root / f".made-{files}-{classes}"
    if marker.exists():
        return
    per_class = files // classes
    for c in range(classes):
        folder = root / f"n{c:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(per_class):
            (folder / f"n{c:08d}_{k:06d}.JPEG").touch()
    marker.touch()


def memory(pid: int) -> dict[str, int]:
    """RSS, PSS and USS (private clean + dirty) of `pid`, in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, value = line.split(":", 1)
        fields[key] = int(value.split()[0]) * 1024
    return {"rss": fields["Rss"], "pss": fields["Pss"], "uss": fields["Private_Clean"] + fields["Private_Dirty"]}


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def load_old(ref: str) -> object:
    """The data layer's datasets module at git `ref` (of the repository `OLD_REPO` names, else this
    checkout's), imported under another name."""
    repo = os.environ.get("OLD_REPO", str(REPO))
    source = subprocess.run(
        ["git", "show", f"{ref}:src/conformer_vision/data/datasets.py"],
        cwd=repo,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    path = Path(tempfile.mkdtemp()) / "old_datasets.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_datasets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def build(impl: str, root: str, old_ref: str):
    """(constructor of the dataset, function index -> length of the sample's path)."""
    if impl == "new":
        from conformer_vision.data.datasets import ImageFolderDataset

        return lambda: ImageFolderDataset(root), lambda ds, i: len(ds.path(i))
    if impl == "old":
        old = load_old(old_ref)
        return lambda: old.ImageFolderDataset(root), lambda ds, i: len(str(ds.samples[i][0]))
    from torchvision.datasets import ImageFolder

    return lambda: ImageFolder(root, loader=len), lambda ds, i: ds[i][0]


class PathLengths:
    """Items: the length of sample i's path, read from the dataset as its loader would."""

    def __init__(self, dataset: object, length: object) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> int:
        return self.length(self.dataset, i)  # type: ignore[operator]


def measure(impl: str, root: str, workers: int, old_ref: str) -> dict[str, object]:
    """Everything about one implementation, in this (fresh) process."""
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    construct, length = build(impl, root, old_ref)
    times = []
    for _ in range(3):
        gc.collect()
        start = time.perf_counter()
        dataset = construct()
        times.append(time.perf_counter() - start)
        del dataset
    gc.collect()
    tracemalloc.start()
    dataset = construct()
    gc.collect()
    held = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    gc.collect()
    loader = DataLoader(
        PathLengths(dataset, length), batch_size=256, shuffle=True, num_workers=workers, persistent_workers=True
    )
    main = os.getpid()
    iterator = iter(loader)
    time.sleep(2.0)  # the workers are up and idle
    pids = children(main)
    before = {"main": memory(main), "workers": [memory(p) for p in pids]}
    count = sum(len(batch) for batch in iterator)
    after = {"main": memory(main), "workers": [memory(p) for p in pids]}
    return {
        "impl": impl,
        "samples": len(dataset),
        "index_s": statistics.median(times),
        "index_times": times,
        "index_bytes": held,
        "epoch_items": count,
        "before": before,
        "after": after,
    }


def mb(x: float) -> str:
    return f"{x / 1e6:.1f}"


def table(results: list[dict], workers: int) -> str:
    rows = ["| | " + " | ".join(NAMES[r["impl"]] for r in results) + " |", "|---|" + "---:|" * len(results)]

    def row(label: str, values: list[str]) -> None:
        rows.append(f"| {label} | " + " | ".join(values) + " |")

    row("indexing time (median of 3)", [f"{r['index_s']:.2f} s" for r in results])
    row("memory of the sample store", [f"{mb(r['index_bytes'])} MB" for r in results])
    for key, label in (("rss", "RSS"), ("uss", "USS (private)")):
        row(
            f"main process {label}: start -> after the epoch",
            [f"{mb(r['before']['main'][key])} -> {mb(r['after']['main'][key])} MB" for r in results],
        )
        row(
            f"{workers} workers {label}, each (mean): start -> after the epoch",
            [
                f"{mb(statistics.mean(w[key] for w in r['before']['workers']))} -> "
                f"{mb(statistics.mean(w[key] for w in r['after']['workers']))} MB"
                for r in results
            ],
        )
    row(
        f"growth of main + {workers} workers, PSS (all they hold) over the epoch",
        [
            f"{mb(sum(m['pss'] for m in [r['after']['main'], *r['after']['workers']]) - sum(m['pss'] for m in [r['before']['main'], *r['before']['workers']]))} MB"
            for r in results
        ],
    )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", default="/tmp/conformer-data-scale", help="the tree (made when missing)")
    parser.add_argument("--files", type=int, default=200_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument(
        "--old_ref",
        default="e7c55f8",
        help="git revision of the data layer before the index (environment OLD_REPO: another clone)",
    )
    parser.add_argument("--only", choices=IMPLEMENTATIONS, action="append", help="measure only these")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--measure", choices=IMPLEMENTATIONS, help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    root = str(Path(args.tree) / "train")
    if args.measure:
        print(json.dumps(measure(args.measure, root, args.workers, args.old_ref)))
        return
    make_tree(Path(root), args.files, args.classes)
    from conformer_vision.data.index import scan_split

    scan_split(root)  # warm the file cache
    results = []
    for impl in args.only or IMPLEMENTATIONS:
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--measure",
                impl,
                "--tree",
                args.tree,
                "--workers",
                str(args.workers),
                "--old_ref",
                args.old_ref,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO / "src")},
        )
        if proc.returncode:
            sys.exit(f"{impl} failed:\n{proc.stderr[-3000:]}")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(f"{impl}: indexed {results[-1]['samples']} in {results[-1]['index_s']:.2f} s", file=sys.stderr)
    print(
        f"{results[0]['samples']:,} empty files in {args.classes} class folders; load average "
        f"{Path('/proc/loadavg').read_text().split()[:3]}; CPU {_cpu()}"
    )
    print(table(results, args.workers))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f" x {os.cpu_count()}"
    return "unknown"


if __name__ == "__main__":
    main()
