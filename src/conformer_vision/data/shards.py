"""Sharded datasets: class-folder splits written as WebDataset tar shards, read back for training
and evaluation on many machines (`data_format: webdataset`).

Writing (`write_shards`, the command `conformer prepare shards SRC OUT`): each split of a class-folder
tree (`SRC/<train_dir>`, `SRC/<val_dir>`, indexed by the same rules as `ImageFolderDataset`, val
classes by the training class list) goes to `OUT/<split>-000000.tar`, ... through `webdataset`'s
`ShardWriter`, in a fixed random order (so every shard holds a mix of classes), at most `shard_size`
images and `max_shard_bytes` per shard. Sample `k` of a split (its position in the sorted folder
index, the same number `ImageFolderDataset` gives it) is stored under the key `%09d` with its file's
bytes unchanged under the file's extension (`000000042.jpg`), its class index (`.cls`) and
`{"path": "<class>/<file>"}` (`.json`). `OUT/classes.json` is the class list;
`OUT/shards.json` (written last, atomically: a folder without it is an unfinished write) lists per
split each shard's name and image count, the images per class and the image-named entries that
were not files. Nothing in OUT is overwritten: a folder that already holds any of these names is
refused before anything is written.

Reading (`ShardDataset`, an `IterableDataset`): shard URLs are local paths, `file:`, `http(s)://`
(read through curl) or `pipe:COMMAND` (the command's standard output), given as brace patterns
(`/data/train-{000000..000146}.tar`); webdataset opens them and splits the tar stream into samples.
Which process and loader worker reads which shard is decided here, deterministically, not by
webdataset's `split_by_node`/`split_by_worker`, so that a run can resume in the middle of an epoch:

* Training: every process has `max(1, num_workers)` streams; the `world x streams` streams of the job
  each take every G-th shard of a permutation of all shards drawn from (seed, epoch), so no shard is
  read twice in an epoch, and each stream shuffles its samples through a buffer of `SHUFFLE_BUFFER`
  samples seeded by (seed, epoch, stream), one pass over its shards at a time. The epoch has `steps_per_epoch = images // (world x
  batch)` steps on every process; stream w makes the process's batches w, w + W, w + 2W, ... (the
  order in which DataLoader collects its workers' batches), and reads its shards again from the
  start if it runs out (shards of unequal length), so some images of an epoch can be seen twice and
  others not at all; over epochs every shard is read equally often. Each image is augmented with RNGs
  seeded by (seed, epoch, image number), as in `ImageFolderDataset`.
* Resume: the stream of every sample is a function of (seed, epoch, process, world size, number of
  loader workers), so skipping the first `skip` samples of an epoch reads (without decoding) the
  same images the interrupted run used: mid-epoch resume is exact when the number of processes and
  of loader workers are those of the checkpoint (`check_resume`).
* Evaluation: the shards in their order, every G-th to each of the `world x workers` streams, each
  image exactly once.

Bad samples follow the folder policies: a sample that does not decode (`decode_rgb`: empty, not an
image, truncated, bomb) or has no image is logged with its shard, key and source path and, in
training, replaced by the next sample of its stream (which then also appears at its own place, as
the folder dataset replaces an index by the next one), in evaluation left out. They are marked in a
shared array (the main process sees what workers found) and counted against the same budget
(`max_bad_files_fraction` of the images plus the entries rejected when the shards were written). A
shard that cannot be opened or read (a missing file, a failing command, a truncated tar) is a
DataError naming it.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import random
import re
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from conformer_vision.data.datasets import check_bad_budget, sample_seed, seeded_rngs
from conformer_vision.data.images import IMAGE_EXTENSIONS, decode_rgb
from conformer_vision.data.index import FolderIndex, scan_split, subset_positions
from conformer_vision.errors import ConfigError, DataError, ImageDecodeError
from conformer_vision.serialization import write_text_atomic

__all__ = [
    "CLASSES_FILE",
    "SHARDS_INFO",
    "SHUFFLE_BUFFER",
    "ShardDataset",
    "ShardSplit",
    "check_resume",
    "open_split",
    "shards_info_url",
    "write_shards",
]

_LOG = logging.getLogger("conformer_vision.data")

SHARDS_INFO = "shards.json"
"""The description of a shard folder `write_shards` writes last: shards, counts, classes."""
CLASSES_FILE = "classes.json"
"""The class list (index -> name) beside the shards."""
SHUFFLE_BUFFER = 1000
"""Samples (their encoded bytes: ~110 MB of ImageNet JPEGs) each training stream shuffles through."""

_FORMAT = "conformer-vision webdataset shards"
_VERSION = 1
_SHARD_ORDER_SALT = 0x5A4D  # the epoch's shard permutation and the streams' shuffles draw apart
_STREAM_SALT = 0x5B1F
_IMAGE_FIELDS = frozenset(ext[1:] for ext in IMAGE_EXTENSIONS)
_SHARD_NAME = re.compile(r"[^/\s'\"]+\.tar")


# ---------------------------------------------------------------------------------------------
# Writing


def write_shards(
    src: str | Path,
    out: str | Path,
    *,
    train_dir: str = "train",
    val_dir: str = "val",
    shard_size: int = 1000,
    max_shard_bytes: int = 1 << 30,
    seed: int = 0,
) -> dict[str, Any]:
    """Write the `train_dir` and `val_dir` splits of the class-folder tree `src` as WebDataset shards
    into `out` (module docstring). Returns {"out", "classes", "splits": {split: {"images", "shards"}}}.

    Raises:
        DataError: a split cannot be indexed, or `out` already holds shards or their description.
        ConfigError: a size is not positive.
    """
    import webdataset as wds

    if shard_size < 1 or max_shard_bytes < 1:
        raise ConfigError(f"--shard_size and --max_shard_mb must be positive, got {shard_size} and {max_shard_bytes}")
    src, out = Path(src), Path(out)
    splits = {"train": train_dir, "val": val_dir}
    train = scan_split(src / train_dir)
    indexes = {"train": train, "val": scan_split(src / val_dir, train.classes)}
    _check_out(out, splits)
    out.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {"format": _FORMAT, "version": _VERSION, "classes": train.classes, "splits": {}}
    for split, index in indexes.items():
        shards, rejected = _write_split(wds, index, out, split, shard_size, max_shard_bytes, seed)
        info["splits"][split] = {
            "source": str((src / splits[split]).absolute()),
            "num_samples": len(index),
            "shards": [{"name": name, "count": count} for name, count in shards],
            "class_counts": np.bincount(index.labels, minlength=len(index.classes)).tolist(),
            "rejected": index.rejected + rejected,
        }
    write_text_atomic(out / CLASSES_FILE, json.dumps(train.classes, indent=1) + "\n")
    write_text_atomic(out / SHARDS_INFO, json.dumps(info, indent=1) + "\n")
    return {
        "out": str(out),
        "classes": train.classes,
        "splits": {s: {"images": v["num_samples"], "shards": len(v["shards"])} for s, v in info["splits"].items()},
    }


def _check_out(out: Path, splits: dict[str, str]) -> None:
    """`out` may exist but must hold none of the names this would write (nothing is overwritten)."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder: choose another output folder for the shards")
    if not out.exists():
        return
    taken = sorted(
        p.name
        for p in out.iterdir()
        if p.name in (SHARDS_INFO, CLASSES_FILE) or any(re.fullmatch(rf"{split}-\d+\.tar", p.name) for split in splits)
    )
    if taken:
        shown = ", ".join(taken[:5]) + (f" and {len(taken) - 5} more" if len(taken) > 5 else "")
        raise DataError(
            f"{out} already holds shards ({shown}): nothing was written; remove them or choose another output folder"
        )


def _write_split(
    wds: Any, index: FolderIndex, out: Path, split: str, shard_size: int, max_shard_bytes: int, seed: int
) -> tuple[list[tuple[str, int]], list[str]]:
    """Write one split in a fixed random order; ([(shard name, image count)], unreadable source paths)."""
    counts: dict[str, int] = {}
    rejected: list[str] = []
    order = np.random.default_rng(seed).permutation(len(index))
    with wds.ShardWriter(
        str(out / f"{split}-%06d.tar"), maxcount=shard_size, maxsize=max_shard_bytes, verbose=0
    ) as writer:
        for k in order.tolist():
            path = index.path(k)
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as err:  # unreadable here: counted against the budget like a non-file
                _LOG.warning("skipping %s: cannot be read (%s)", path, err.strerror or err)
                rejected.append(path)
                continue
            label = int(index.labels[k])
            ext = index.name(k).rpartition(".")[2].lower()
            writer.write(
                {
                    "__key__": f"{k:09d}",
                    ext: data,
                    "cls": label,
                    "json": {"path": f"{index.classes[label]}/{index.name(k)}"},
                }
            )
            name = Path(writer.fname).name
            counts[name] = counts.get(name, 0) + 1
    return list(counts.items()), rejected


# ---------------------------------------------------------------------------------------------
# Describing a split


@dataclass(frozen=True)
class ShardSplit:
    """One split of a sharded dataset, resolved: its shard URLs and what `shards.json` says of them.

    Attributes:
        name: "train" or "val".
        urls: where each shard is read from.
        shard_names: the shard file names, as listed in `shards.json` (`train-000012.tar`).
        counts: images in each shard.
        classes: the class list the shards' labels index.
        class_counts: images per class in the whole split.
        rejected: source entries that were not written (counted against the bad-file budget).
        info_url: the `shards.json` it was read from.
        total: images in the split (all shards `shards.json` lists, whichever `urls` names).
    """

    name: str
    urls: tuple[str, ...]
    shard_names: tuple[str, ...]
    counts: tuple[int, ...]
    classes: tuple[str, ...]
    class_counts: tuple[int, ...]
    rejected: tuple[str, ...]
    info_url: str
    total: int

    def __str__(self) -> str:
        return f"{self.name} shards of {self.info_url}"


def shards_info_url(data_url: str, shards_info: str = "") -> str:
    """Where the description of a shard folder is: `shards_info`, or `shards.json` in `data_url`."""
    return shards_info or f"{data_url.rstrip('/')}/{SHARDS_INFO}"


def open_split(info_url: str, split: str, pattern: str = "") -> ShardSplit:
    """The split `split` of the shards `info_url` (a `shards.json`, path or URL) describes, read from
    `pattern` (a brace pattern of URLs; '' = the shards it lists, beside it).

    Raises:
        DataError: the description cannot be read or is not one, or a URL names no listed shard.
    """
    info = _read_info(info_url)
    entry = info["splits"].get(split)
    if entry is None:
        raise DataError(f"{info_url} describes no {split!r} split (it has {sorted(info['splits'])})")
    listed = {s["name"]: int(s["count"]) for s in entry["shards"]}
    if pattern:
        urls = _expand(pattern)
        names = [_listed_name(url, listed, info_url) for url in urls]
    elif info_url.startswith("pipe:"):
        raise DataError(f"shards_info {info_url!r} is a command: give the shard URLs too (train_shards, val_shards)")
    else:
        base = info_url.rsplit("/", 1)[0] if "/" in info_url else "."
        names = list(listed)
        urls = [f"{base}/{name}" for name in names]
    if not urls:
        raise DataError(f"no {split} shards: {pattern or info_url} names none")
    return ShardSplit(
        split,
        tuple(urls),
        tuple(names),
        tuple(listed[n] for n in names),
        tuple(info["classes"]),
        tuple(int(c) for c in entry["class_counts"]),
        tuple(entry.get("rejected", [])),
        info_url,
        int(entry["num_samples"]),
    )


def _read_info(url: str) -> dict[str, Any]:
    """The parsed `shards.json` at `url` (local path or any URL webdataset's gopen reads)."""
    try:
        if _is_local(url):
            text = Path(url.removeprefix("file:")).read_text()
        else:
            from webdataset import gopen

            with gopen(url) as stream:
                text = stream.read().decode()
        info = json.loads(text)
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise DataError(
            f"cannot read the shard description {url} ({type(err).__name__}: {err}); it is the "
            f"{SHARDS_INFO} that conformer prepare shards writes beside the shards (shards_info)"
        ) from None
    if not isinstance(info, dict) or info.get("format") != _FORMAT:
        raise DataError(f"{url} is not a {SHARDS_INFO} written by conformer prepare shards")
    if int(info.get("version", 0)) > _VERSION:
        raise DataError(f"{url} was written by a newer conformer-vision (format version {info['version']})")
    return info


def _is_local(url: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", url) or url.startswith("file:")


def _expand(pattern: str) -> list[str]:
    """URLs of a brace pattern (`train-{000000..000146}.tar`; several patterns joined by `::`)."""
    from webdataset.shardlists import expand_urls

    return [url for url in expand_urls(pattern) if url]


def _listed_name(url: str, listed: dict[str, int], info_url: str) -> str:
    """The listed shard a URL reads: the last `*.tar` name in it that `shards.json` lists."""
    for name in reversed(_SHARD_NAME.findall(url)):
        base = name.rsplit("/", 1)[-1]
        if base in listed:
            return base
    raise DataError(f"shard URL {url!r} names none of the shards {info_url} lists ({', '.join(list(listed)[:3])}, ...)")


# ---------------------------------------------------------------------------------------------
# Reading


class _Raw(NamedTuple):
    """One sample as read from a shard, not decoded."""

    index: int
    label: int
    data: bytes
    where: str  # <shard name>/<key>.<ext>
    meta: bytes  # the sample's .json (its source path), parsed only for messages
    shard: int


class ShardDataset(IterableDataset):
    """The images of a `ShardSplit` as (transform(image), target) (module docstring).

    Args:
        split: the shards.
        transform: PIL RGB image -> tensor.
        training: True: the training stream (steps_per_epoch x batch_size items per process and epoch,
            shuffled, replace policy); False: every image once (drop policy).
        batch_size, seed, rank, world_size, num_workers: the run's (training: the stream layout).
        classes: the class list targets index (evaluation of a model); None: the split's own.
        num_samples: -1 for every image, else the fixed subset `ImageFolderDataset` would use.
        max_bad_fraction, max_bad_files, max_substitutions: as `ImageFolderDataset`.
    """

    def __init__(
        self,
        split: ShardSplit,
        transform: Callable[[Image.Image], Any] | None,
        *,
        training: bool,
        batch_size: int = 1,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        num_workers: int = 0,
        classes: Sequence[str] | None = None,
        num_samples: int = -1,
        max_bad_fraction: float = 0.01,
        max_bad_files: int | None = None,
        max_substitutions: int = 10,
    ) -> None:
        self.split, self.transform, self.training = split, transform, training
        self.bad_policy = "replace" if training else "drop"
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.streams = max(1, num_workers)
        self.max_bad_fraction, self.max_bad_files, self.max_substitutions = (
            max_bad_fraction,
            max_bad_files,
            max_substitutions,
        )
        self.root = str(split)
        self.classes = list(classes) if classes is not None else list(split.classes)
        self._labels = _label_map(split, self.classes)
        self._member: np.ndarray | None = None
        self.num_images = split.total
        if num_samples != -1 and num_samples < split.total:
            if num_samples < 1:
                raise ConfigError(f"num_samples must be -1 (all) or a positive count, got {num_samples}")
            self._member = np.zeros(split.total, dtype=bool)
            self._member[subset_positions(split.total, num_samples)] = True
            self.num_images = num_samples
        self.epoch = 0
        self.skip = 0  # training: samples of this process's epoch already trained on (resume)
        self.steps_per_epoch = self.num_images // (world_size * batch_size) if training else 0
        if training and len(split.urls) < world_size * self.streams:
            raise DataError(
                f"{len(split.urls)} {split.name} shard(s) for {world_size} process(es) x {self.streams} loader "
                f"stream(s): every stream needs a shard of its own; write smaller shards (conformer prepare shards "
                f"--shard_size) or lower num_parallel_workers"
            )
        # Per image: 0 = fine so far, s + 1 = found unreadable in shard s (shared with loader workers).
        self._bad = torch.zeros(split.total, dtype=torch.int32).share_memory_()

    # -- what the trainer and the evaluator read -------------------------------------------------

    def __len__(self) -> int:
        """Items this process yields per pass: training exactly, evaluation at most (its shards)."""
        if self.training:
            return self.steps_per_epoch * self.batch_size
        job_streams = self.world_size * self.streams
        return sum(c for s, c in enumerate(self.split.counts) if (s % job_streams) // self.streams == self.rank)

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass draws (shard order, shuffles, augmentations); no samples skipped."""
        self.epoch, self.skip = epoch, 0

    @property
    def bad_files(self) -> list[str]:
        """The images known unreadable so far (`<shard>/<key>`; this process and its loader workers)
        and the entries rejected when the shards were written, sorted."""
        marks = self._bad.numpy()
        found = [f"{self.split.shard_names[marks[i] - 1]}/{i:09d}" for i in np.flatnonzero(marks).tolist()]
        return sorted(list(self.split.rejected) + found)

    @property
    def num_entries(self) -> int:
        """Images plus the entries rejected when writing: what the budget is a fraction of."""
        return self.num_images + len(self.split.rejected)

    @property
    def bad_budget(self) -> int:
        """How many bad entries are tolerated; one more raises DataError."""
        if self.max_bad_files is not None:
            return self.max_bad_files
        return math.floor(self.max_bad_fraction * self.num_entries)

    def preview(self, count: int) -> list[Any]:
        """The first `count` transformed training images of this epoch's first stream, read here in
        this process (for a look at the augmented input; nothing is skipped or changed)."""
        items = self._training_items(0, 1, skip_batches=0)
        return [image for image, _ in (next(items) for _ in range(min(count, len(self))))]

    # -- iteration ---------------------------------------------------------------------------

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        worker = get_worker_info()
        slot, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        if not self.training:
            return self._eval_items(slot, workers)
        if workers != self.streams:
            raise RuntimeError(f"ShardDataset built for {self.streams} streams is read by {workers} loader workers")
        return self._training_items(slot, workers, skip_batches=self.skip // self.batch_size)

    def _training_items(self, slot: int, workers: int, skip_batches: int) -> Iterator[tuple[Any, int]]:
        """Loader worker `slot`'s items: after a resume at batch `skip_batches` its first batch is the
        process's next one, so it plays stream (slot + skip_batches) % workers."""
        stream = (slot + skip_batches) % workers
        steps = self.steps_per_epoch
        batches, skipped = len(range(stream, steps, workers)), len(range(stream, min(skip_batches, steps), workers))
        job_streams = self.world_size * workers
        order = np.random.default_rng([self.seed, self.epoch, _SHARD_ORDER_SALT]).permutation(len(self.split.urls))
        mine = order[self.rank * workers + stream :: job_streams].tolist()
        shuffled = self._shuffled_passes(mine, self.rank * workers + stream)
        return self._replace_bad(shuffled, batches * self.batch_size, skipped * self.batch_size)

    def _shuffled_passes(self, shards: list[int], stream: int) -> Iterator[_Raw]:
        """Pass after pass over `shards`, each through webdataset's shuffle buffer seeded by (seed,
        epoch, stream, pass); one pass drains before the next starts, so a stream with fewer images
        than the buffer still shows each of them once before repeating any."""
        from webdataset import shuffle

        for n in itertools.count():
            seed = np.random.SeedSequence([self.seed, self.epoch, stream, n, _STREAM_SALT])
            rng = random.Random(int(seed.generate_state(1)[0]))
            produced = 0
            for sample in shuffle(SHUFFLE_BUFFER, initial=SHUFFLE_BUFFER // 10, rng=rng)(self._raw_samples(shards)):
                produced += 1
                yield sample
            if produced == 0:
                names = ", ".join(self.split.shard_names[s] for s in shards[:3])
                raise DataError(
                    f"the {self.split.name} shards {names} hold no image of this run's subset "
                    "(train_num_samples): use more images or fewer loader workers"
                )

    def _replace_bad(self, raw: Iterator[_Raw], count: int, skip: int) -> Iterator[tuple[Any, int]]:
        """`count` items of `raw`, the first `skip` read but not decoded; an unreadable sample is
        replaced by the next readable one of the stream, augmented with its own seed."""
        ahead: deque[_Raw] = deque()

        def peek(k: int) -> _Raw:
            while len(ahead) < k:
                ahead.append(next(raw))
            return ahead[k - 1]

        for position in range(count):
            sample = ahead.popleft() if ahead else next(raw)
            if position < skip:
                continue
            seed = sample_seed(self.seed, self.epoch, sample.index)
            for k in range(self.max_substitutions + 1):
                candidate = sample if k == 0 else peek(k)
                image = self._decode(candidate)
                if image is None:
                    continue
                with seeded_rngs(seed):
                    yield (self.transform(image) if self.transform else image), int(self._labels[candidate.label])
                break
            else:
                raise DataError(
                    f"{self.max_substitutions + 1} consecutive unreadable images from {sample.where} on "
                    f"in the {self.split}; check the shards' source images"
                )

    def _eval_items(self, slot: int, workers: int) -> Iterator[tuple[Any, int]]:
        """Every readable image of this stream's shards once, in shard order."""
        job_streams = self.world_size * workers
        mine = list(range(len(self.split.urls)))[self.rank * workers + slot :: job_streams]
        for sample in self._raw_samples(mine):
            image = self._decode(sample)
            if image is not None:
                yield (self.transform(image) if self.transform else image), int(self._labels[sample.label])

    def _raw_samples(self, shards: list[int]) -> Iterator[_Raw]:
        """The samples of `shards` that belong to this run's subset, shard after shard."""
        for shard in shards:
            for sample in self._read_shard(shard):
                if self._member is None or self._member[sample.index]:
                    yield sample

    def _read_shard(self, shard: int) -> Iterator[_Raw]:
        """The samples of one shard, as webdataset groups its tar members."""
        from webdataset import tarfile_samples

        url, name = self.split.urls[shard], self.split.shard_names[shard]
        try:
            for item in tarfile_samples(iter([{"url": url}])):
                yield _parse(item, name, shard, len(self._labels))
        except DataError:
            raise
        except Exception as err:  # noqa: BLE001 - gopen, tarfile and the shell report I/O failures in many types
            raise DataError(
                f"cannot read shard {url}: {type(err).__name__}: {_first_line(err)}; check that it "
                f"exists and is complete (conformer prepare shards writes it)"
            ) from None

    def _decode(self, sample: _Raw) -> Image.Image | None:
        """The decoded image, or None after recording it as bad."""
        try:
            if sample.label < 0:
                raise ImageDecodeError(sample.where, "no image or no class index in the shard sample")
            return decode_rgb(sample.data, sample.where)
        except ImageDecodeError as err:
            self._record_bad(sample, err)
            return None

    def _record_bad(self, sample: _Raw, err: ImageDecodeError) -> None:
        """Log and mark `sample` bad (once), then enforce the budget."""
        if not self._bad[sample.index]:
            self._bad[sample.index] = sample.shard + 1
            source = _source_of(sample.meta)
            verb = (
                "dropping unreadable image %s%s (not counted): %s"
                if self.bad_policy == "drop"
                else "skipping unreadable image %s%s: %s"
            )
            _LOG.warning(verb, sample.where, f" (source {source})" if source else "", err.reason)
        num_bad = len(self.split.rejected) + int(torch.count_nonzero(self._bad))
        check_bad_budget(
            num_bad, self.num_entries, self.split, self.max_bad_fraction, self.max_bad_files, lambda: self.bad_files
        )


def _parse(item: dict[str, Any], shard_name: str, shard: int, num_labels: int) -> _Raw:
    """A webdataset sample dict as `_Raw`; a sample without image or class gets label -1 (bad)."""
    key = item.get("__key__", "")
    try:
        index = int(key.rsplit("/", 1)[-1])
    except ValueError:
        raise DataError(
            f"shard {shard_name} holds the sample {key!r}, not a numbered image: it was not written by "
            "conformer prepare shards"
        ) from None
    field = next((k for k in item if k in _IMAGE_FIELDS), None)
    try:
        label = int(item["cls"])
    except (KeyError, ValueError):
        label = -1
    if field is None or not 0 <= label < num_labels:
        label = -1
    where = f"{shard_name}/{key}.{field or '?'}"
    return _Raw(index, label, item[field] if field else b"", where, item.get("json", b""), shard)


def _source_of(meta: bytes) -> str:
    try:
        return str(json.loads(meta).get("path", ""))
    except (ValueError, AttributeError):
        return ""


def _first_line(err: BaseException) -> str:
    """The first line of an exception's message (webdataset appends the URL and stream to `args`)."""
    text = str(err.args[0]) if err.args else ""
    return (text or type(err).__name__).splitlines()[0][:300]


def _label_map(split: ShardSplit, classes: list[str]) -> np.ndarray:
    """Shard label -> index in `classes`, by name; a class with images that `classes` lacks is an
    error, a class of `classes` without images only warns (as for class folders)."""
    position = {name: i for i, name in enumerate(classes)}
    unknown = [n for n, c in zip(split.classes, split.class_counts) if c and n not in position]
    if unknown:
        raise DataError(
            f"the {split} hold class(es) {unknown[:10]} that are not in the class list of the model or "
            f"the training data; known classes ({len(classes)}): {classes[:20]}"
        )
    present = {n for n, c in zip(split.classes, split.class_counts) if c}
    missing = [n for n in classes if n not in present]
    if missing:
        _LOG.warning("the %s hold no image of %d class(es): %s", split, len(missing), missing[:20])
    return np.array([position.get(n, -1) for n in split.classes], dtype=np.int64)


def check_resume(train_set: ShardDataset, checkpoint: dict[str, Any], start_batch: int) -> None:
    """Refuse a mid-epoch resume whose streams would differ from the interrupted run's: another
    number of processes or of loader workers reads other shards in another order."""
    if not start_batch:
        return
    config = checkpoint.get("config") or {}
    state = checkpoint.get("train_state") or {}
    then = (int(state.get("world_size", train_set.world_size)), max(1, int(config.get("num_parallel_workers", 0))))
    if then != (train_set.world_size, train_set.streams):
        raise DataError(
            f"the checkpoint was written mid-epoch reading shards with {then[0]} process(es) x {then[1]} loader "
            f"stream(s), this run has {train_set.world_size} x {train_set.streams}: the rest of the epoch would be "
            f"other images; resume with --num_parallel_workers {then[1]} on {then[0]} process(es), or from an "
            "end-of-epoch checkpoint"
        )
