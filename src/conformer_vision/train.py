"""``conformer train``: the whole training run of one :class:`~conformer_vision.config.Config`.

``train(cfg)`` validates the output folders, builds the data (``conformer_vision.data``), the
model, the optimiser and schedule (``optim``), the two-head loss (``losses``), loss scaling, EMA and
DDP, optionally resumes, then alternates ``engine.train_one_epoch`` and ``engine.evaluate`` while
checkpointing through ``checkpoint.CheckpointManager``. Under ``torchrun`` every process runs it;
rank 0 alone writes files.

Run directory
    The parent of ``ckpt_root_dir`` (``runs/x`` for ``ckpt_root_dir: runs/x/checkpoints``), except
    when that parent is the working directory or one of its ancestors (``--ckpt_root_dir ckpt``):
    then ``ckpt_root_dir`` itself, so a run never writes beside the user's own files
    (``rundir.run_dir_for``). It holds ``config.yaml`` (the resolved config), ``class_names.json``,
    ``metrics.jsonl``, ``model.txt`` (``dump_graph``) and the manifest ``.conformer-run.json``, the
    list of every file the run wrote. Checkpoints go to ``ckpt_root_dir`` (the ``ckpt_keep_num``
    newest) and ``best_ckpt_root_dir`` (the ``best_ckpt_num`` best by val top-1 of the raw
    weights), TensorBoard events to ``summary_root_dir``; the shipped configs put all three inside
    the run directory.

Starting, and what is never touched
    Before any work the output folders must be creatable and writable (one line, exit 2, otherwise).
    A run removes or overwrites only files listed in its manifest; a file it would write that
    exists and is not listed (a user's ``config.yaml``, another run's checkpoint in a shared folder)
    stops it before any work. A run directory that holds a run is refused unless resuming it
    (``checkpoint``: ``auto`` continues only a run of the same ``<arch>_<model_postfix>``, and never
    deletes anything) or ``overwrite: true``, which first checks everything (config, both data
    splits and the class list, the pretrained and resume files against the architecture, the
    output folders, free space for one checkpoint) and only then removes the previous run's listed
    files. A finished run resumed says so and exits 0; resuming with a larger ``epochs`` extends it
    and recomputes the learning-rate schedule for the new length (the schedule is a function of the
    step and of this run's options; the stored scheduler state is not reloaded).

``metrics.jsonl``
    One JSON object per line::

        {"kind": "train", "epoch": int, "step": int, "time": float, "loss": float, "lr": float,
         "images_per_s": float, ["loss_scale": float]}
        {"kind": "val", "epoch": int, "step": int, "time": float, "Loss": ..., "Top1-Acc": ...,
         "Top5-Acc": ..., "conv_loss", "conv_top1", "conv_top5", "trans_loss", "trans_top1",
         "trans_top5", "num_samples", [the same keys prefixed "ema_" when with_ema]}

    ``epoch`` is 1-based, as in the log and the checkpoint names: the epoch a train line's step
    belongs to, the epoch a val line evaluated (= epochs done). ``step`` is the global optimisation
    step (1-based, counted over the whole run), ``time`` a Unix timestamp. Train lines come every
    ``print_loss_every`` steps and average the finite losses since the previous line (all ranks);
    accuracies are fractions in [0, 1]; a non-finite value is written as ``null``. A resumed run
    first drops the lines after its checkpoint's step, so the file describes one history.

Resume and faults
    Checkpoints hold the model, optimizer, scheduler, loss scaler, EMA, epoch, global step, batch
    position in the epoch, sampler seed and every RNG state (Python, NumPy, torch CPU and CUDA, per
    rank). ``checkpoint: auto`` (or a path) continues exactly: the final weights equal an
    uninterrupted run's bit for bit on CPU, from any step and with any number of loader workers
    (each image's augmentation is seeded by (seed, epoch, index): ``ResumableSampler``). SIGTERM/SIGINT finish the current step, write a checkpoint and
    return exit code 143/130; all ranks stop at the same step. A step whose loss or gradients are not
    finite is skipped and logged; ``max_nonfinite_steps`` consecutive ones stop the run with an error.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, Subset

from . import distributed as D
from . import precision
from .checkpoint import FORMAT, CheckpointManager, build_checkpoint, find_resumable, read_checkpoint
from .config import Config
from .data import ImageFolderDataset, Preprocess, build_train_transform, set_loader_epoch
from .data.datasets import EvalLoader, drop_failed, sample_seed
from .data.index import index_splits
from .data.shards import ShardDataset, open_split, shards_info_url
from .data.shards import check_resume as check_shard_resume
from .engine import StepRecord, TrainParts, evaluate, train_one_epoch
from .errors import CheckpointError, ConfigError, ConformerError, DataError
from .finetune import TrainingModule, describe_frozen, freeze_stages
from .hub import is_hub_name, load_hub_model
from .losses import build_criterion
from .models import Conformer, create_model
from .models.convert import load_state_dict_strict
from .optim import build_optimizer, build_scheduler
from .paths import check_output_dir, free_bytes
from .pretrained import IMAGENET, PUBLISHED
from .rundir import MANIFEST_NAME, OwnedFiles, RunManifest, absolute, hold_run_lock, run_dir_for
from .runlog import METRICS_FILE, RunLog
from .runtime import AMP_DTYPES, resolve_device
from .serialization import write_text_atomic

__all__ = [
    "train",
    "Trainer",
    "TrainResult",
    "RunSetup",
    "build_run",
    "run_dir_of",
    "build_model",
    "capture_rng_state",
    "restore_rng_state",
]

log = logging.getLogger("conformer_vision.train")

EXIT_CODES = {signal.SIGTERM: 143, signal.SIGINT: 130}


@dataclass
class TrainResult:
    """How a run ended: ``status`` "completed", "interrupted" or "finished" (a resumed run that had
    already done its ``epochs``: nothing trained); ``exit_code`` 0, 143 or 130. ``epoch`` is the
    0-based index of the last epoch trained, ``epochs_done`` the count of complete epochs;
    ``is_main`` is False on the processes of a torchrun launch that print nothing."""

    status: str
    exit_code: int
    run_dir: Path
    epoch: int
    step: int
    metrics: dict[str, float] = field(default_factory=dict)
    best_top1: float | None = None
    last_checkpoint: Path | None = None
    is_main: bool = True
    epochs_done: int = 0


class TrainingError(ConformerError):
    """Training cannot go on (diverged: repeated non-finite losses, non-finite weights)."""


# ---------------------------------------------------------------------------------------------
# Small pieces: run directory, RNG, signals


def run_dir_of(cfg: Config) -> Path:
    """The run directory: the parent of ``ckpt_root_dir``, or ``ckpt_root_dir`` itself when that
    parent is the working directory or above it (``rundir.run_dir_for``)."""
    return run_dir_for(cfg.ckpt_root_dir)


def checkpoint_prefix(cfg: Config) -> str:
    return f"{cfg.arch}_{cfg.model_postfix}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as weights_only-loadable values."""
    version, state, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "python": {"version": version, "state": list(state), "gauss_next": gauss},
        "numpy": {
            "name": name,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["name"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class StopOnSignal:
    """While active, the first SIGTERM/SIGINT only records a stop request (the loop finishes the
    step and checkpoints); a second one of the same kind ends the process the default way."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopOnSignal:
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum is not None:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        self.signum = signum
        log.warning("received %s: finishing this step, writing a checkpoint, then exiting", signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# Building blocks of a run


class ResumableSampler(DistributedSampler):
    """A ``DistributedSampler`` whose items are pairs (index, augmentation seed), the seed a
    function of (run seed, epoch, index) alone (``sample_seed``; ``ImageFolderDataset`` seeds the
    transform's RNGs with it). Every image is therefore augmented the same way whichever loader
    worker, rank or resumed run draws it, and the next pass can skip its first ``skip`` items (how
    a run resumes in the middle of an epoch, bit-exact with loader workers too, without loading the
    skipped images)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.skip = 0

    def __iter__(self):  # type: ignore[override]
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0
        seed, epoch = self.seed, self.epoch
        return ((i, sample_seed(seed, epoch, i)) for i in indices[skip:])


@dataclass
class RunData:
    class_names: list[str]
    train_loader: DataLoader
    val_loader: EvalLoader
    # ``.skip``: samples of this process's epoch already trained on (a mid-epoch resume).
    sampler: ResumableSampler | ShardDataset
    steps_per_epoch: int
    preprocess: Preprocess
    num_train: int = 0  # images (after train_num_samples) and val images, for the start-up summary
    num_val: int = 0
    val_classes: int = 0  # classes with val images

    def check_resume(self, checkpoint: dict[str, Any], start_batch: int) -> None:
        """Refuse a mid-epoch resume this data cannot continue exactly (shards read by another
        number of processes or loader workers); class folders continue from any layout."""
        if isinstance(self.sampler, ShardDataset):
            try:
                check_shard_resume(self.sampler, checkpoint, start_batch)
            except DataError as err:
                raise CheckpointError(str(err)) from None

    def preview(self, count: int) -> list[torch.Tensor]:
        """The first ``count`` augmented training images (``collect_input_data``)."""
        dataset = self.train_loader.dataset
        if isinstance(dataset, ShardDataset):
            return dataset.preview(count)
        return [dataset[i][0] for i in range(min(count, len(dataset)))]


def train_transform(cfg: Config) -> Any:
    """The training augmentation ``cfg`` describes (timm's, ``data.build_train_transform``)."""
    return build_train_transform(
        cfg.image_hw,
        min_crop=cfg.min_crop,
        auto_augment=cfg.auto_augment,
        aa_interpolation=cfg.aa_interpolation,
        re_prob=cfg.re_prob,
        re_mode=cfg.re_mode,
        re_count=cfg.re_count,
        hflip=cfg.hflip,
        color_jitter=cfg.color_jitter,
        interpolation=cfg.interpolation,
        augment=cfg.augment,
        crop_pct=cfg.crop_pct,
    )


def build_data(cfg: Config, info: D.DistInfo) -> RunData:
    """The class list (from ``train_dir``), the train loader (augmented, sharded, drop_last) and the
    val loader (eval transform, each rank a strided share, no padding so metrics are exact; an
    unreadable val image is dropped and logged, never replaced by a neighbour counted twice).

    Class folders are indexed once per job (``index_splits``: rank 0 scans, the others receive the
    arrays); ``data_format: webdataset`` reads tar shards instead (``_build_shard_data``)."""
    pre = Preprocess(cfg.image_hw, interpolation=cfg.interpolation, crop_pct=cfg.crop_pct)
    transform = train_transform(cfg)
    if cfg.data_format == "webdataset":
        return _build_shard_data(cfg, info, pre, transform)
    root = Path(cfg.data_url)
    for split in (cfg.train_dir, cfg.val_dir):  # the message names the split (the index says "data folder")
        if not (root / split).is_dir():
            raise DataError(
                f"{'training' if split == cfg.train_dir else 'validation'} data folder {root / split} "
                "does not exist or is not a directory"
            )
    train_index, val_index = index_splits(root / cfg.train_dir, [root / cfg.val_dir])
    classes = train_index.classes
    _check_num_classes(cfg, classes, str(root / cfg.train_dir))
    bad = dict(max_bad_fraction=cfg.max_bad_files_fraction)
    train_set = ImageFolderDataset(
        root / cfg.train_dir, transform, index=train_index, num_samples=cfg.train_num_samples, **bad
    )
    # Validation drops an unreadable image (logged) instead of counting a neighbour twice.
    val_set = ImageFolderDataset(
        root / cfg.val_dir,
        pre.eval_transform(),
        index=val_index,
        num_samples=cfg.val_num_samples,
        bad_policy="drop",
        **bad,
    )
    sampler = ResumableSampler(
        train_set, num_replicas=info.world_size, rank=info.rank, shuffle=True, seed=cfg.seed, drop_last=True
    )
    common = dict(num_workers=cfg.num_parallel_workers, pin_memory=torch.cuda.is_available())
    train_loader = DataLoader(
        train_set, batch_size=cfg.batch_size, sampler=sampler, drop_last=True, generator=torch.Generator(), **common
    )
    val_share = Subset(val_set, range(info.rank, len(val_set), info.world_size))
    # Its own generator: evaluating never draws from the global RNG the training stream depends on.
    val_loader = EvalLoader(
        DataLoader(
            val_share,
            batch_size=cfg.batch_size,
            shuffle=False,
            collate_fn=drop_failed,
            generator=torch.Generator(),
            persistent_workers=cfg.num_parallel_workers > 0,
            **common,
        )
    )
    steps = len(train_loader)
    if steps == 0:
        raise DataError(
            f"{root / cfg.train_dir} has {len(train_set)} images, fewer than one global batch "
            f"({cfg.batch_size} x {info.world_size} processes); lower batch_size"
        )
    return RunData(
        classes,
        train_loader,
        val_loader,
        sampler,
        steps,
        pre,
        len(train_set),
        len(val_set),
        len(np.unique(val_set.labels)),
    )


def _build_shard_data(cfg: Config, info: D.DistInfo, pre: Preprocess, transform: Any) -> RunData:
    """``build_data`` for ``data_format: webdataset``: the splits ``shards_info`` describes, read
    from ``train_shards`` / ``val_shards``; every process and loader worker reads its own shards
    (``data.shards``); evaluation sees each val image once over all processes."""
    info_url = shards_info_url(cfg.data_url, cfg.shards_info)
    train_split, val_split = (
        open_split(info_url, "train", cfg.train_shards),
        open_split(info_url, "val", cfg.val_shards),
    )
    classes = list(train_split.classes)
    _check_num_classes(cfg, classes, str(train_split))
    common = dict(
        seed=cfg.seed,
        rank=info.rank,
        world_size=info.world_size,
        num_workers=cfg.num_parallel_workers,
        batch_size=cfg.batch_size,
        max_bad_fraction=cfg.max_bad_files_fraction,
    )
    train_set = ShardDataset(train_split, transform, training=True, num_samples=cfg.train_num_samples, **common)
    val_set = ShardDataset(
        val_split, pre.eval_transform(), training=False, classes=classes, num_samples=cfg.val_num_samples, **common
    )
    if train_set.steps_per_epoch == 0:
        raise DataError(
            f"the {train_split} hold {train_set.num_images} images, fewer than one global batch "
            f"({cfg.batch_size} x {info.world_size} processes); lower batch_size"
        )
    loading = dict(
        num_workers=cfg.num_parallel_workers, pin_memory=torch.cuda.is_available(), generator=torch.Generator()
    )
    # Training workers start afresh every epoch: each takes the epoch and resume position set just before.
    train_loader = DataLoader(train_set, batch_size=cfg.batch_size, drop_last=True, **loading)
    val_loader = EvalLoader(
        DataLoader(
            val_set,
            batch_size=cfg.batch_size,
            collate_fn=drop_failed,
            persistent_workers=cfg.num_parallel_workers > 0,
            **loading,
        )
    )
    return RunData(
        classes,
        train_loader,
        val_loader,
        train_set,
        train_set.steps_per_epoch,
        pre,
        train_set.num_images,
        val_set.num_images,
        sum(1 for count in val_split.class_counts if count),
    )


def _check_num_classes(cfg: Config, classes: list[str], where: str) -> None:
    if len(classes) != cfg.num_classes:
        raise ConfigError(
            f"num_classes is {cfg.num_classes} but {where} has {len(classes)} class "
            f"folders ({', '.join(classes[:10])}{', ...' if len(classes) > 10 else ''}); set --num_classes {len(classes)}"
        )


def build_model(cfg: Config, num_classes: int) -> Conformer:
    """The configured variant; ``pretrained`` weights loaded (another class count re-initialises both
    heads). ``pretrained`` may be ``imagenet`` (the variant's published ImageNet-1k weights, fetched
    once into the torch hub cache: ``pretrained.fetch``), a weights file or a hub model,
    ``local-dir:FOLDER`` / ``hf-hub:user/repo``, rebuilt by timm from its config.json
    (``hub.load_hub_model``)."""
    options = dict(
        num_classes=num_classes,
        drop_rate=cfg.drop,
        attn_drop_rate=cfg.drop_block,
        drop_path_rate=cfg.drop_path,
        approximate_gelu=not cfg.disable_approximate_gelu,
        same_pad_maxpool=not cfg.use_pytorch_maxpool,
    )
    try:
        if cfg.pretrained and is_hub_name(cfg.pretrained):
            return load_hub_model(cfg.pretrained, options, variant=cfg.arch).model.train()  # type: ignore[return-value]
        if cfg.pretrained == IMAGENET:
            return create_model(cfg.arch, pretrained=True, **options)
        return create_model(cfg.arch, pretrained=cfg.pretrained or None, **options)
    except CheckpointError as e:
        raise CheckpointError(f"pretrained: {e}") from None


def _build_mixup(cfg: Config, num_classes: int, steps_per_epoch: int) -> tuple[Any, int | None]:
    """timm's Mixup (or None) and the global step from which it is switched off."""
    if not (cfg.augment and (cfg.mixup > 0 or cfg.cutmix > 0) and cfg.mixup_prob > 0):
        return None, None
    from timm.data import Mixup

    mixup = Mixup(
        mixup_alpha=cfg.mixup,
        cutmix_alpha=cfg.cutmix,
        prob=cfg.mixup_prob,
        switch_prob=cfg.switch_prob,
        mode=cfg.mixup_mode,
        label_smoothing=cfg.label_smoothing,
        num_classes=num_classes,
    )
    off = round(cfg.mixup_off_epoch * steps_per_epoch) if cfg.mixup_off_epoch > 0 else None
    return mixup, off


# ---------------------------------------------------------------------------------------------
# Output folders, the previous run and the checkpoint to start from

RUN_FILE_NAMES = ("config.yaml", "class_names.json", METRICS_FILE, "model.txt")
"""The files a run writes in its run directory (``model.txt`` only with ``dump_graph``)."""


def output_folders(cfg: Config) -> list[tuple[str, Path]]:
    """(option name, folder) of every folder a run writes in."""
    folders = [
        ("ckpt_root_dir", Path(cfg.ckpt_root_dir)),
        ("best_ckpt_root_dir", Path(cfg.best_ckpt_root_dir)),
        ("summary_root_dir", Path(cfg.summary_root_dir)),
    ]
    if absolute(run_dir_of(cfg)) != absolute(cfg.ckpt_root_dir):
        folders.append(("the run directory (the parent of ckpt_root_dir)", run_dir_of(cfg)))
    return folders


def check_output_folders(cfg: Config) -> None:
    """Every output folder exists or can be created, and is writable (``paths.check_output_dir``:
    a path below a regular file, ``/proc``, a read-only place are one ConfigError)."""
    for what, folder in output_folders(cfg):
        check_output_dir(folder, what)


@dataclass
class StartPlan:
    """How a run starts, decided before any work; nothing is written or removed until ``commit``.

    ``keep``: the previous run's manifest when this run continues it (resume, or a restart of a
    run that never wrote a checkpoint); ``adopt``: files of a run directory written before
    manifests existed that a resume takes over; ``replace``: the previous run's files that
    ``overwrite`` removes; ``how``: what happens, in words (start-up summary)."""

    run_dir: Path
    resume: dict[str, Any] | None = None
    resume_path: Path | None = None
    previous: RunManifest | None = None
    keep: RunManifest | None = None
    adopt: list[Path] = field(default_factory=list)
    replace: list[Path] = field(default_factory=list)
    how: str = "a new run"


def plan_start(cfg: Config, manager: CheckpointManager) -> StartPlan:
    """Read the run directory (its manifest), find the checkpoint to resume and decide what the run
    may write and remove; raises a ConformerError for every conflict, before anything changes."""
    plan = StartPlan(run_dir_of(cfg))
    previous = plan.previous = RunManifest.read(plan.run_dir)
    prefix = manager.prefix
    same_run = previous is not None and previous.prefix == prefix
    if cfg.checkpoint == "auto":
        if previous is not None and not same_run and not cfg.overwrite:
            raise ConfigError(_holds_another_run(cfg, previous, plan.run_dir, prefix))
        candidates = manager.checkpoint_files()
        if previous is not None:
            candidates = [p for p in candidates if previous.owns(p)]
        found = find_resumable(candidates)
        if found is None and candidates:
            raise CheckpointError(
                f"checkpoint: auto found {len(candidates)} checkpoint(s) in {cfg.ckpt_root_dir} "
                "but none is readable and resumable (see the warnings above); pass one with --checkpoint PATH"
            )
        if found is None:
            log.info("checkpoint: auto: no checkpoint of %s in %s yet, starting a new run", prefix, cfg.ckpt_root_dir)
        else:
            plan.resume_path, plan.resume = found
    elif cfg.checkpoint:
        obj = read_checkpoint(cfg.checkpoint)
        if not (isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("train_state")):
            raise CheckpointError(
                f"{cfg.checkpoint} cannot be resumed: it holds no training state (optimizer, epoch, "
                "RNG); to start from its weights use --pretrained instead"
            )
        plan.resume, plan.resume_path = obj, Path(cfg.checkpoint)
    _decide(cfg, manager, plan, same_run)
    _check_collisions(cfg, manager, plan)
    return plan


def _decide(cfg: Config, manager: CheckpointManager, plan: StartPlan, same_run: bool) -> None:
    """Continue, adopt, restart or replace the previous run (``StartPlan``), or refuse."""
    previous, prefix = plan.previous, manager.prefix
    resumed = f" from {plan.resume_path}" if plan.resume_path is not None else ""
    if plan.resume is not None and (previous is None or same_run):
        plan.keep = previous
        plan.how = f"resuming the run {prefix}{resumed}"
        in_run = {absolute(p) for p in manager.checkpoint_files()}
        if previous is None and absolute(plan.resume_path) in in_run:  # type: ignore[arg-type]
            plan.adopt = _files_before_manifests(cfg, manager, plan.run_dir)
            plan.how += (
                f" (written before run manifests: its {len(plan.adopt)} files are listed in {MANIFEST_NAME} now)"
            )
        return
    if previous is None:
        return
    if same_run and plan.resume is None and cfg.checkpoint == "auto" and not previous.existing_checkpoints():
        plan.keep = previous  # a run stopped before its first checkpoint: the same run, started again
        plan.how = f"starting the run {prefix} again from the beginning (it has no checkpoint yet)"
        return
    if not cfg.overwrite:
        raise ConfigError(_holds_a_run(cfg, previous, plan.run_dir, same_run))
    plan.replace = previous.existing()
    if plan.resume_path is not None and absolute(plan.resume_path) in plan.replace:
        raise ConfigError(
            f"--checkpoint {plan.resume_path} is a file of the run in {plan.run_dir} that --overwrite true "
            "would remove; copy it elsewhere first, or choose another ckpt_root_dir"
        )
    plan.how = (
        f"replacing the run {previous.prefix} (--overwrite true: its {len(plan.replace)} files are removed "
        f"once every check has passed){resumed and ', then resuming' + resumed}"
    )


def _holds_another_run(cfg: Config, previous: RunManifest, run_dir: Path, prefix: str) -> str:
    return (
        f"{run_dir} holds the run {previous.prefix} ({_describe_files(previous)}), not a run of {prefix}: "
        f"--checkpoint auto resumes only a run of the same arch and model_postfix and never deletes anything "
        f"(nothing was changed). Continue that run with --arch {previous.arch} --model_postfix "
        f"{previous.model_postfix}, start this one in another ckpt_root_dir, or replace that run with --overwrite true"
    )


def _holds_a_run(cfg: Config, previous: RunManifest, run_dir: Path, same_run: bool) -> str:
    if not same_run:
        how = f"continue it with --arch {previous.arch} --model_postfix {previous.model_postfix} --checkpoint auto"
    elif cfg.checkpoint == "auto":
        how = "it has no checkpoint to resume from; resume it from a checkpoint with --checkpoint PATH"
    else:
        how = "resume it with --checkpoint auto"
    return (
        f"{run_dir} already holds a run: {previous.prefix} ({_describe_files(previous)}); {how}, replace it "
        "with --overwrite true, or choose another ckpt_root_dir"
    )


def _describe_files(manifest: RunManifest) -> str:
    files = manifest.existing()
    checkpoints = [p for p in files if p.suffix == ".pt"]
    newest = f", e.g. {checkpoints[-1]}" if checkpoints else ""
    return f"{len(files)} files of its own, {len(checkpoints)} of them checkpoints{newest}"


def _files_before_manifests(cfg: Config, manager: CheckpointManager, run_dir: Path) -> list[Path]:
    """A run directory written before run manifests existed, being resumed: the checkpoints of this
    prefix in the checkpoint folders, and the run files when its ``config.yaml`` is a run's copy of
    this arch and postfix (not a config the user keeps there)."""
    files = [*manager.checkpoint_files(), *manager.best_checkpoint_files()]
    config = run_dir / "config.yaml"
    try:
        import yaml

        saved = yaml.safe_load(config.read_text(encoding="utf-8")) if config.is_file() else None
    except (OSError, UnicodeDecodeError, ValueError):
        saved = None
    if (
        isinstance(saved, dict)
        and saved.get("arch") == cfg.arch
        and str(saved.get("model_postfix")) == str(cfg.model_postfix)
    ):
        files += [run_dir / name for name in RUN_FILE_NAMES if (run_dir / name).is_file()]
    return files


def _check_collisions(cfg: Config, manager: CheckpointManager, plan: StartPlan) -> None:
    """Refuse when a file this run would write exists and is not its own (nor the replaced run's):
    it would be overwritten, or mixed into this run's rotation."""
    mine = OwnedFiles([*(plan.keep.files() if plan.keep else []), *plan.adopt, *plan.replace])
    names = [n for n in RUN_FILE_NAMES if n != "model.txt" or cfg.dump_graph]
    clashes = [plan.run_dir / n for n in names if (plan.run_dir / n).exists() and not mine.owns(plan.run_dir / n)]
    if clashes:
        shown = ", ".join(str(p) for p in clashes)
        raise ConfigError(
            f"{shown} {'was' if len(clashes) == 1 else 'were'} not written by this run (not listed in "
            f"{plan.run_dir / MANIFEST_NAME}), and the run would write its own files there under those "
            "names; nothing a run did not write is overwritten or removed: give the run a folder of "
            "its own (e.g. --ckpt_root_dir runs/NAME/checkpoints) or move those files away"
        )
    foreign = [p for p in manager.checkpoint_files() + manager.best_checkpoint_files() if not mine.owns(p)]
    if foreign:
        raise ConfigError(
            f"{foreign[0]}{f' (and {len(foreign) - 1} more)' if len(foreign) > 1 else ''} is named like "
            f"a checkpoint of {manager.prefix} but was not written by this run (e.g. another run's, in a "
            "shared folder); it would be overwritten or mixed into this run's: resume it with "
            "--checkpoint auto, or choose another ckpt_root_dir / best_ckpt_root_dir"
        )


def commit(cfg: Config, plan: StartPlan, manager: CheckpointManager) -> RunManifest:
    """Rank 0, once every check has passed: remove the replaced run's files, then create (or
    continue) this run's manifest and clean up this run's half-written checkpoints."""
    if plan.replace:
        for path in plan.replace:
            try:
                path.unlink(missing_ok=True)
            except OSError as e:
                raise ConfigError(
                    f"--overwrite true: could not remove {path} ({e.strerror}); nothing else was "
                    "removed after it: fix its permissions and run again"
                ) from None
        log.warning(
            "--overwrite true: removed the %d files of the run %s (listed in %s)",
            len(plan.replace),
            plan.previous.prefix if plan.previous else "?",
            plan.run_dir / MANIFEST_NAME,
        )
    manifest = plan.keep
    if manifest is None:
        manifest = RunManifest(plan.run_dir, cfg.arch, str(cfg.model_postfix), plan.adopt)
    manager.registry = manifest
    manager.remove_partial_writes()
    return manifest


def _finished(cfg: Config, resume: dict[str, Any]) -> bool:
    """The resumed checkpoint has already done ``epochs`` (or more)."""
    ts = resume["train_state"]
    return int(ts["epoch"]) >= cfg.epochs


def _check_free_space(cfg: Config, setup: RunSetup, plan: StartPlan) -> None:
    """Refuse to start when a checkpoint folder cannot take one more checkpoint (atomic writes need
    room for the new file beside the old ones); the replaced run's files there count as free."""
    need = checkpoint_bytes(cfg, setup)
    folders = [("ckpt_root_dir", Path(cfg.ckpt_root_dir))]
    if cfg.best_ckpt_num > 0:
        folders.append(("best_ckpt_root_dir", Path(cfg.best_ckpt_root_dir)))
    for what, folder in folders:
        free = free_bytes(folder)
        if free is None:
            continue
        freed = sum(p.stat().st_size for p in plan.replace if p.is_file() and p.parent == absolute(folder))
        if free + freed < need:
            raise ConfigError(
                f"{what} {folder}: {free / 2**20:.1f} MiB free, but one checkpoint of this run needs about "
                f"{need / 2**20:.1f} MiB; free some space or choose another {what}"
            )


def checkpoint_bytes(cfg: Config, setup: RunSetup) -> int:
    """About the size of one checkpoint: the weights, the EMA copy, the optimizer's per-parameter
    state (AdamW: 2 tensors, SGD: 1) and some headroom for the rest."""
    weights = sum(t.numel() * t.element_size() for t in setup.model.state_dict().values())
    params = sum(p.numel() * p.element_size() for p in setup.model.parameters())
    slots = 2 if cfg.optimizer == "adamw" else 1
    return int((weights * (2 if setup.ema is not None else 1) + params * slots) * 1.05) + 2**20


# ---------------------------------------------------------------------------------------------
# The run


@dataclass
class Position:
    """Where training starts: the epoch index, the global step, the batches of that epoch already
    trained (a mid-epoch resume) and the counters a resumed run carries on; ``rng`` is this
    process's RNG states from the checkpoint, restored right before the loop (None: a new run keeps
    its seeded streams)."""

    epoch: int = 0
    step: int = 0
    batch: int = 0
    best_top1: float | None = None
    nonfinite_streak: int = 0
    skipped_steps: int = 0
    rng: dict[str, Any] | None = None


@dataclass
class RunSetup:
    """What ``build_run`` makes of the config and the checkpoint resumed: the data, the bare model
    and its EMA, what every step touches (``parts``: the training module, optimizer, schedule,
    scaler, loss, mixup) and where training starts. Building it writes nothing."""

    data: RunData
    model: Conformer
    ema: nn.Module | None
    parts: TrainParts
    start: Position


def build_run(cfg: Config, info: D.DistInfo, device: torch.device, resume: dict[str, Any] | None) -> RunSetup:
    """Seed, build the data, the model (weights of ``resume`` when given), EMA, DDP / compile
    wrappers, optimizer, schedule, loss scaler, mixup and loss; with ``resume``, restore the
    optimizer, scaler and position too (``_restore``)."""
    cfg.check_training()
    seed_everything(cfg.seed + info.rank)
    data = build_data(cfg, info)
    if resume is not None and resume.get("class_names") not in (None, data.class_names):
        raise CheckpointError(
            f"the checkpoint's classes {resume['class_names'][:5]}... differ from the data's "
            f"{data.class_names[:5]}...: the data folder changed since the checkpoint"
        )
    model = build_model(cfg, len(data.class_names)).to(device)
    if resume is not None:
        source = f"the checkpoint (arch {resume.get('arch')})"
        load_state_dict_strict(model, resume["model"], source=source, allow_new_heads=False)
    if cfg.sync_bn and (info.enabled or device.type != "cuda"):
        model = D.convert_sync_batchnorm(model, device)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    freeze_stages(model, cfg.freeze_stages)  # after the SyncBatchNorm swap, which makes new parameters
    ema = _build_ema(cfg, model, resume)
    module = D.wrap_ddp(TrainingModule(model, cfg.freeze_stages), device)
    if cfg.compile:  # after DDP, as torch recommends (graph breaks at the gradient buckets)
        module = torch.compile(module)  # type: ignore[assignment]
    spe = data.steps_per_epoch
    if cfg.warmup_length >= cfg.epochs and info.is_main:
        _warn_warmup_only(cfg, spe)
    optimizer = build_optimizer(
        model,
        cfg.optimizer,
        lr=cfg.base_lr,
        weight_decay=cfg.weight_decay,
        betas=tuple(cfg.beta),
        eps=cfg.eps,
        momentum=cfg.momentum,  # type: ignore[arg-type]
        layer_decay=cfg.layer_decay,
    )
    scheduler = build_scheduler(
        optimizer,
        cfg.lr_scheduler,
        epochs=cfg.epochs,
        steps_per_epoch=spe,
        warmup_epochs=cfg.warmup_length,
        warmup_lr=cfg.warmup_lr,
        min_lr=cfg.min_lr,
        lr_adjust=cfg.lr_adjust,
        lr_gamma=cfg.lr_gamma,
    )
    scaler = (
        torch.amp.GradScaler(device.type, init_scale=cfg.loss_scale)
        if precision.AMP_LEVELS[cfg.amp_level].loss_scaling
        else None
    )
    mixup, mixup_off = _build_mixup(cfg, len(data.class_names), spe)
    criterion = build_criterion(
        soft_targets=mixup is not None, label_smoothing=cfg.label_smoothing if cfg.augment else 0.0
    )
    parts = TrainParts(
        model=module,
        criterion=criterion,
        optimizer=optimizer,
        scheduler=scheduler,
        device=device,
        amp_dtype=AMP_DTYPES[cfg.amp_level],
        scaler=scaler,
        static_loss_scale=None if cfg.is_dynamic_loss_scale else cfg.loss_scale,
        ema=ema,
        mixup=mixup,
        mixup_off_step=mixup_off,
        channels_last=cfg.channels_last,
        clip_grad_norm=cfg.clip_grad_norm if cfg.use_clip_grad_norm else None,
    )
    if resume is None:
        start = Position(epoch=cfg.start_epoch, step=cfg.start_epoch * spe)
    else:
        start = _restore(cfg, info, data, parts, resume)
    return RunSetup(data, model, ema, parts, start)


def _build_ema(cfg: Config, model: Conformer, resume: dict[str, Any] | None) -> nn.Module | None:
    if not cfg.with_ema:
        return None
    from timm.utils import ModelEmaV3

    ema = ModelEmaV3(model, decay=cfg.ema_decay)
    if resume is not None and resume.get("ema") is not None:
        ema.module.load_state_dict(resume["ema"])
    elif resume is not None:
        log.warning("the checkpoint has no EMA weights: the EMA starts from the current weights")
    return ema


def _restore(cfg: Config, info: D.DistInfo, data: RunData, parts: TrainParts, ckpt: dict[str, Any]) -> Position:
    """Optimizer and scaler state from a checkpoint's train_state, and where it stopped (weights and
    EMA are loaded by ``build_run``; the RNG states are restored right before the loop)."""
    ts = ckpt["train_state"]
    spe = data.steps_per_epoch
    _restore_optimizer(cfg, parts.optimizer, ts["optimizer"], ckpt.get("config") or {})
    # The scheduler's stored state is not reloaded: the learning rate is a function of the step
    # and of this run's options, so a run resumed with a larger ``epochs`` stretches its schedule.
    if parts.scaler is not None and ts.get("scaler"):
        parts.scaler.load_state_dict(ts["scaler"])
    epoch, batch = int(ts["epoch"]), int(ts["batch_in_epoch"])
    data.check_resume(ckpt, batch)
    if ts.get("steps_per_epoch") != spe:
        if batch:
            raise CheckpointError(
                f"the checkpoint was written mid-epoch with {ts.get('steps_per_epoch')} steps per epoch, this run has "
                f"{spe} (batch_size, device_num or the data changed): resume from an end-of-epoch checkpoint instead"
            )
        log.warning(
            "steps per epoch changed (%s -> %d): the schedule continues from epoch %d",
            ts.get("steps_per_epoch"),
            spe,
            epoch,
        )
    rng = ts.get("rng") or []
    start = Position(
        epoch=epoch,
        step=epoch * spe + batch,
        batch=batch,
        best_top1=ts.get("best_top1"),
        nonfinite_streak=int(ts.get("nonfinite_streak", 0)),
        skipped_steps=int(ts.get("skipped_steps", 0)),
        rng=rng[info.rank] if len(rng) == info.world_size else None,
    )
    if start.rng is None and rng:
        log.warning(
            "the checkpoint holds RNG states of %d process(es), this run has %d: random streams restart",
            len(rng),
            info.world_size,
        )
    log.info("resuming at epoch %d, step %d (batch %d of %d)", epoch + 1, start.step, batch, spe)
    if info.is_main:
        _note_new_length(cfg, parts, start.step, ckpt)
    return start


def _restore_optimizer(
    cfg: Config, optimizer: torch.optim.Optimizer, state: dict[str, Any], saved: dict[str, Any]
) -> None:
    """The optimizer's state from a checkpoint. Its parameter groups must be this run's (the same
    ``freeze_stages``, and ``layer_decay`` on or off alike); the groups' ``lr_scale`` are this
    run's (a changed ``layer_decay`` value applies from the resumed step, as a changed base_lr)."""
    scales = [g.get("lr_scale") for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(state)
    except ValueError as e:
        before = ", ".join(f"{k} {saved.get(k, 'unset')}" for k in ("layer_decay", "freeze_stages"))
        now = f"layer_decay {cfg.layer_decay}, freeze_stages {cfg.freeze_stages}"
        raise CheckpointError(
            f"the checkpoint's optimizer does not fit this run's parameter groups ({e}): it was written with "
            f"{before}, this run has {now}; resume with the checkpoint's values, or start a new run from its "
            "weights with --pretrained"
        ) from None
    for group, scale in zip(optimizer.param_groups, scales):
        if scale is None:
            group.pop("lr_scale", None)
        else:
            group["lr_scale"] = scale


def _note_new_length(cfg: Config, parts: TrainParts, step: int, ckpt: dict[str, Any]) -> None:
    """Say so when a resumed run has another ``epochs`` than its checkpoint's config: the
    schedule is recomputed for the new length (as timm does with a new --epochs)."""
    before = (ckpt.get("config") or {}).get("epochs")
    if before is None or int(before) == cfg.epochs:
        return
    optimizer = parts.optimizer
    last_lr = float(optimizer.param_groups[0]["lr"])
    parts.scheduler.step_update(step)  # the rate of the next step (set again before it)
    log.warning(
        "epochs changed from %d to %d: the run %s to %d epochs and its %s schedule is recomputed for "
        "that length (learning rate of the last step %.3e, of the next step %.3e)",
        int(before),
        cfg.epochs,
        "is extended" if cfg.epochs > int(before) else "is shortened",
        cfg.epochs,
        cfg.lr_scheduler,
        last_lr,
        float(optimizer.param_groups[0]["lr"]),
    )


class Trainer:
    """One training process: the loop over the epochs of a built run (``RunSetup``), and the
    callbacks the loop calls after every step (stop on a signal, count non-finite steps, log to
    ``run_log``, checkpoint through ``manager``)."""

    def __init__(
        self,
        cfg: Config,
        info: D.DistInfo,
        device: torch.device,
        setup: RunSetup,
        manager: CheckpointManager,
        run_log: RunLog,
    ) -> None:
        self.cfg, self.info, self.device = cfg, info, device
        self.data, self.model, self.ema, self.parts = setup.data, setup.model, setup.ema, setup.parts
        self.manager, self.log = manager, run_log
        start = setup.start
        self.epoch, self.step, self.start_batch = start.epoch, start.step, start.batch
        self.best_top1 = start.best_top1
        self.nonfinite_streak, self.skipped_steps = start.nonfinite_streak, start.skipped_steps
        self.rng = start.rng  # restored right before the loop
        self.signals = StopOnSignal()
        self.stop_signal: int | None = None
        self.last_checkpoint: Path | None = None
        self.metrics: dict[str, float] = {}
        manager.start_at(self.step)  # step-interval saves count from where the run starts

    # -- checkpoints ---------------------------------------------------------------------------

    def _checkpoint(self, epoch: int, batch: int) -> dict[str, Any] | None:
        """The checkpoint dict on rank 0 (None elsewhere); every rank must call it (RNG gather)."""
        rng = D.all_gather_objects(capture_rng_state())
        if not self.info.is_main:
            return None
        _check_finite(self.model, self.ema, self.step)
        parts = self.parts
        train_state = {
            "epoch": epoch,
            "batch_in_epoch": batch,
            "step": self.step,
            "steps_per_epoch": self.data.steps_per_epoch,
            "world_size": self.info.world_size,
            "batch_size": self.cfg.batch_size,
            "sampler_seed": self.cfg.seed,
            "optimizer": parts.optimizer.state_dict(),
            "scheduler": parts.scheduler.state_dict(),
            "scaler": parts.scaler.state_dict() if parts.scaler is not None else None,
            "rng": rng,
            "best_top1": self.best_top1,
            "nonfinite_streak": self.nonfinite_streak,
            "skipped_steps": self.skipped_steps,
        }
        ema_state = (
            {k: v.detach().cpu() for k, v in self.ema.module.state_dict().items()} if self.ema is not None else None
        )
        return build_checkpoint(
            self.model,
            class_names=self.data.class_names,
            preprocess=self.data.preprocess.to_dict(),
            config=self.cfg.to_dict(),
            ema_state=ema_state,
            train_state=train_state,
            metrics=self.metrics,
        )

    def save(self, epoch: int, batch: int, best: bool = False) -> None:
        ckpt = self._checkpoint(epoch, batch)
        if ckpt is None:
            return
        # File names count completed epochs; the position inside the epoch is in train_state.
        self.last_checkpoint = self.manager.save_latest(ckpt, epoch, self.step)
        log.info("checkpoint: %s", self.last_checkpoint)
        top1 = self.metrics.get("Top1-Acc")
        if best and top1 is not None and top1 == top1:
            ranked = self.manager.best_files()
            path = self.manager.save_best(ckpt, epoch, float(top1))
            if path is not None:
                self._log_best(epoch, float(top1), path, ranked[0][0] if ranked else None)

    def _log_best(self, epoch: int, top1: float, path: Path, previous_best: float | None) -> None:
        """Say what a best checkpoint just written is: the new best, as good as the best, or one of
        the ``best_ckpt_num`` kept (the file names rank by top-1 rounded to 4 digits)."""
        if previous_best is None or round(top1, 4) > previous_best:
            log.info("new best checkpoint (epoch %d, top-1 %.4f): %s", epoch, top1, path)
        elif round(top1, 4) == previous_best:
            log.info(
                "best checkpoint (epoch %d, top-1 %.4f, as good as the best so far; the newer ranks first): %s",
                epoch,
                top1,
                path,
            )
        else:
            log.info(
                "epoch %d (top-1 %.4f) kept as number %s of the %d best checkpoints (best top-1 %.4f): %s",
                epoch,
                top1,
                self.manager.rank_of(path),
                self.manager.best_keep,
                previous_best,
                path,
            )

    # -- the loop ------------------------------------------------------------------------------

    def on_step(self, rec: StepRecord) -> bool:
        """After every step: the cross-rank consensus (stop, non-finite, loss, save due), logging,
        timed checkpoints. Returns True to stop."""
        self.step = rec.step
        loss = float(rec.loss)
        finite = loss == loss and abs(loss) != float("inf")
        due = self.info.is_main and rec.batch < self.data.steps_per_epoch and self.manager.due(rec.step)
        sigterm, sigint, bad, loss_sum, save = D.all_reduce_sum(
            [
                self.signals.signum == signal.SIGTERM,
                self.signals.signum == signal.SIGINT,
                not finite,
                loss if finite else 0.0,
                due,
            ],
            self.device,
        )
        self._track_nonfinite(rec, bad > 0)
        world = self.info.world_size
        mean_loss = loss_sum / (world - bad) if bad < world else float("nan")
        scalars = {"loss_scale": float(self.parts.scaler.get_scale())} if self.parts.scaler is not None else {}
        self.log.train_step(rec.epoch, rec.step, mean_loss, rec.lr, rec.batch_size * world, scalars)
        if sigterm or sigint:
            self.stop_signal = signal.SIGTERM if sigterm else signal.SIGINT
            self.save(rec.epoch, rec.batch)
            return True
        if save:
            self.save(rec.epoch, rec.batch)
        return False

    def _track_nonfinite(self, rec: StepRecord, any_nonfinite_loss: bool) -> None:
        if rec.applied and not any_nonfinite_loss:
            self.nonfinite_streak = 0
            return
        self.skipped_steps += 1
        if not any_nonfinite_loss and self.parts.scaler is not None and self.parts.static_loss_scale is None:
            log.debug(
                "step %d: fp16 gradient overflow, loss scale lowered to %g", rec.step, self.parts.scaler.get_scale()
            )
            return  # dynamic loss scaling at work, not divergence
        self.nonfinite_streak += 1
        log.warning(
            "step %d: non-finite %s, update skipped (%d in a row, limit %d)",
            rec.step,
            "loss" if any_nonfinite_loss else "gradients",
            self.nonfinite_streak,
            self.cfg.max_nonfinite_steps,
        )
        if self.nonfinite_streak >= self.cfg.max_nonfinite_steps:
            raise TrainingError(
                f"training diverged: {self.nonfinite_streak} consecutive steps with a non-finite loss or gradients "
                f"(up to step {rec.step}); lower base_lr, enable use_clip_grad_norm, or use amp_level O0/bf16, then "
                f"resume from the last good checkpoint ({self.last_checkpoint or 'none written yet'})"
            )

    def _epoch_end(self, epoch: int) -> None:
        cfg = self.cfg
        last = epoch + 1 == cfg.epochs
        dataset = self.data.train_loader.dataset
        if dataset.bad_files:  # each was logged when met; this is the running count
            log.warning(
                "epoch %d: %d unreadable training image(s) skipped so far (budget %d)",
                epoch + 1,
                len(dataset.bad_files),
                dataset.bad_budget,
            )
        if (epoch + 1) % cfg.eval_every == 0 or last:
            kw = dict(
                device=self.device,
                num_classes=len(self.data.class_names),
                amp_dtype=AMP_DTYPES[cfg.amp_level],
                channels_last=cfg.channels_last,
            )
            self.metrics = evaluate(self.model, self.data.val_loader, **kw)
            if self.ema is not None:
                ema = evaluate(self.ema.module, self.data.val_loader, **kw)
                self.metrics.update({f"ema_{k}": v for k, v in ema.items()})
            top1 = self.metrics["Top1-Acc"]
            self.best_top1 = top1 if self.best_top1 is None else max(self.best_top1, top1)
            self.log.val(epoch, self.step, self.metrics)
        self.save(epoch + 1, 0, best=bool(self.metrics) and ((epoch + 1) % cfg.eval_every == 0 or last))

    def run(self) -> None:
        cfg, data = self.cfg, self.data
        if self.rng is not None:
            restore_rng_state(self.rng)
        for epoch in range(self.epoch, cfg.epochs):
            self.epoch = epoch
            set_loader_epoch(data.train_loader, epoch)
            data.sampler.skip = self.start_batch * cfg.batch_size
            self.log.start_epoch(epoch)
            self.step, stopped = train_one_epoch(
                self.parts,
                data.train_loader,
                epoch=epoch,
                step=self.step,
                start_batch=self.start_batch,
                on_step=self.on_step,
            )
            self.start_batch = 0
            if stopped:
                return
            self._epoch_end(epoch)
            sigterm, sigint = D.all_reduce_sum(
                [self.signals.signum == signal.SIGTERM, self.signals.signum == signal.SIGINT], self.device
            )
            if sigterm or sigint:  # a signal during evaluation: the epoch-end checkpoint is the last one
                self.stop_signal = signal.SIGTERM if sigterm else signal.SIGINT
                return


def _warn_warmup_only(cfg: Config, steps_per_epoch: int) -> None:
    """``warmup_length`` is not shorter than ``epochs``: the whole run is warm-up (timm and MindSpore
    do the same); say where the learning rate ends."""
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_length * steps_per_epoch
    end = cfg.warmup_lr + (cfg.base_lr - cfg.warmup_lr) * (total - 1) / warmup
    log.warning(
        "warmup_length %d is not shorter than epochs %d: the whole run is warm-up, the learning rate rises "
        "linearly from %.3g towards base_lr %.3g and ends at %.3g (%s never starts)",
        cfg.warmup_length,
        cfg.epochs,
        cfg.warmup_lr,
        cfg.base_lr,
        end,
        cfg.lr_scheduler,
    )


def _check_finite(model: nn.Module, ema: Any, step: int) -> None:
    """Refuse to checkpoint weights or BatchNorm statistics that are NaN/Inf."""
    modules = [("weights", model)] + ([("EMA weights", ema.module)] if ema is not None else [])
    for label, module in modules:
        for name, t in module.state_dict().items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise TrainingError(
                    f"{label} hold non-finite values ({name}) at step {step}: not writing a checkpoint; "
                    "resume from the last good one with a lower base_lr or amp_level O0"
                )


def _write_run_files(cfg: Config, setup: RunSetup, manifest: OwnedFiles) -> None:
    """The run directory's config copy, class list and ``model.txt``, each listed before it is written."""
    run_dir = run_dir_of(cfg)
    params = sum(p.numel() for p in setup.model.parameters())
    texts = {"config.yaml": cfg.to_yaml(), "class_names.json": json.dumps(setup.data.class_names, indent=1) + "\n"}
    if cfg.dump_graph:
        texts["model.txt"] = f"{cfg.arch}: {params:,} parameters\n{setup.model}\n"
    for name, text in texts.items():
        manifest.add(run_dir / name)
        write_text_atomic(run_dir / name, text)


def _log_input_grid(run: Trainer) -> None:
    """``collect_input_data``: the first training images after augmentation, to TensorBoard."""
    images = torch.stack(run.data.preview(16))  # (N, 3, H, W)
    mean = torch.tensor(run.data.preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(run.data.preprocess.std).view(1, 3, 1, 1)
    run.log.image_grid("train/input_images", (images * std + mean).clamp(0, 1), run.step)


def _log_start(cfg: Config, info: D.DistInfo, device: torch.device, setup: RunSetup, plan: StartPlan) -> None:
    """The start-up summary (rank 0, once): where, what data, which model, on what."""
    data = setup.data
    classes = data.class_names
    shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
    params = sum(p.numel() for p in setup.model.parameters())
    if plan.resume is not None:
        source = "weights of the checkpoint resumed"
    else:
        source = f"weights from {cfg.pretrained}" if cfg.pretrained else "random initial weights"
        if cfg.pretrained == IMAGENET:
            source = f"the published ImageNet-1k weights ({PUBLISHED[cfg.arch].file_name})"
    log.info("run directory %s: %s", plan.run_dir, plan.how)
    log.info(
        "data %s: train %d images in %d classes (%s), val %d images in %d of them; %d steps per epoch of %d images "
        "(%d per process x %d)",
        cfg.data_url,
        data.num_train,
        len(classes),
        shown,
        data.num_val,
        data.val_classes,
        data.steps_per_epoch,
        cfg.batch_size * info.world_size,
        cfg.batch_size,
        info.world_size,
    )
    log.info(
        "model %s: %s parameters, %s; %d epochs, %s with %s, amp_level %s",
        cfg.arch,
        f"{params:,}",
        source,
        cfg.epochs,
        cfg.optimizer,
        cfg.lr_scheduler,
        cfg.amp_level,
    )
    if cfg.freeze_stages or cfg.layer_decay is not None:
        trainable = sum(p.numel() for p in setup.model.parameters() if p.requires_grad)
        lowest = min(g.get("lr_scale", 1.0) for g in setup.parts.optimizer.param_groups)
        decay = (
            "no layer decay"
            if cfg.layer_decay is None
            else f"layer_decay {cfg.layer_decay:g}: the heads at the "
            f"scheduled lr, the lowest trainable layer at {lowest:.3g} x that"
        )
        log.info(
            "fine-tuning: %s, %s of %s parameters train; %s",
            describe_frozen(cfg.freeze_stages),
            f"{trainable:,}",
            f"{params:,}",
            decay,
        )
    log.info(
        "device %s: %d process(es), %d compute thread(s) and %d loader worker(s) per process",
        device,
        info.world_size,
        torch.get_num_threads(),
        cfg.num_parallel_workers,
    )


def train(cfg: Config) -> TrainResult:
    """Train (or resume) the run ``cfg`` describes; see the module docstring. Returns how it ended;
    raises ConformerError subclasses for expected problems (bad data, config, checkpoint, divergence)."""
    cfg.check_training()  # before any folder, checkpoint or data is touched
    if int(os.environ.get("RANK", "0")) == 0:  # rank 0 alone writes; torchrun stops the others on its error
        check_output_folders(cfg)
    # a bare cuda is this process's GPU: LOCAL_RANK under torchrun, else device_id
    device = resolve_device(cfg.device_target, int(os.environ.get("LOCAL_RANK", cfg.device_id)), "device_target")
    info = D.init_distributed(device, cfg.device_num)
    try:
        with _quiet_unless_main(info.is_main):
            return _train(cfg, info, device)
    finally:
        D.shutdown()


@contextlib.contextmanager
def _quiet_unless_main(is_main: bool) -> Any:
    """On ranks other than 0, log warnings and errors only: rank 0 tells the story once."""
    logger = logging.getLogger("conformer_vision")
    level = logger.level
    if not is_main:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _train(cfg: Config, info: D.DistInfo, device: torch.device) -> TrainResult:
    manager = CheckpointManager(
        cfg.ckpt_root_dir,
        cfg.best_ckpt_root_dir,
        prefix=checkpoint_prefix(cfg),
        keep=cfg.ckpt_keep_num,
        best_keep=cfg.best_ckpt_num,
        every_steps=cfg.ckpt_save_every_step,
        every_seconds=cfg.ckpt_save_every_seconds,
        enabled=info.is_main,
    )
    plan = plan_start(cfg, manager)
    if plan.resume is not None and _finished(cfg, plan.resume):
        return _finished_result(cfg, plan, info)
    resume = plan.resume
    if resume is None and cfg.pretrained and not cfg.exclude_epoch_state:
        resume = _pretrained_state(cfg)
    try:
        setup = build_run(cfg, info, device, resume)
    except CheckpointError as e:
        if plan.resume_path is None:
            raise
        raise CheckpointError(f"cannot resume from {plan.resume_path}: {e}") from None
    if info.is_main:
        _check_free_space(cfg, setup, plan)
    # Every check has passed: from here on the run writes (and, with overwrite, first removes).
    with hold_run_lock(plan.run_dir) if info.is_main else contextlib.nullcontext():
        manifest: OwnedFiles = commit(cfg, plan, manager) if info.is_main else OwnedFiles()
        D.barrier()
        if plan.resume_path is not None:
            log.info("resumed from %s", plan.resume_path)
        if info.is_main:
            _write_run_files(cfg, setup, manifest)
            _log_start(cfg, info, device, setup, plan)  # before the progress bar appears
        run_log = RunLog(
            plan.run_dir,
            Path(cfg.summary_root_dir),
            enabled=info.is_main,
            registry=manifest,
            total_steps=cfg.epochs * setup.data.steps_per_epoch,
            start_step=setup.start.step,
            print_every=cfg.print_loss_every,
            tb_every=cfg.summary_loss_collect_freq,
            epochs=cfg.epochs,
            restart=plan.keep is not None,
            legacy_metrics=bool(plan.adopt),
        )
        try:
            run = Trainer(cfg, info, device, setup, manager, run_log)
            if info.is_main and cfg.collect_input_data and resume is None:
                _log_input_grid(run)
            with run.signals, _redirect_logging(info.is_main):
                run.run()
                D.barrier()  # rank 0 has finished writing before any process exits
        finally:
            run_log.close()
    status = "interrupted" if run.stop_signal is not None else "completed"
    code = EXIT_CODES.get(run.stop_signal, 0) if run.stop_signal is not None else 0
    done = run.epoch + 1 if status == "completed" else run.epoch
    return TrainResult(
        status,
        code,
        plan.run_dir,
        run.epoch,
        run.step,
        run.metrics,
        run.best_top1,
        run.last_checkpoint,
        is_main=info.is_main,
        epochs_done=done,
    )


def _finished_result(cfg: Config, plan: StartPlan, info: D.DistInfo) -> TrainResult:
    """A resumed run that has already done ``epochs``: nothing is trained, written or removed."""
    assert plan.resume is not None
    ts = plan.resume["train_state"]
    metrics = dict(plan.resume.get("metrics") or {})
    done = int(ts["epoch"])
    return TrainResult(
        "finished",
        0,
        plan.run_dir,
        done - 1,
        int(ts["step"]),
        metrics,
        ts.get("best_top1"),
        plan.resume_path,
        is_main=info.is_main,
        epochs_done=done,
    )


def _redirect_logging(enabled: bool) -> Any:
    """Log lines printed above the progress bar instead of through it."""
    if not enabled:
        return contextlib.nullcontext()
    from tqdm.contrib.logging import logging_redirect_tqdm

    return logging_redirect_tqdm()


def _pretrained_state(cfg: Config) -> dict[str, Any] | None:
    """With ``exclude_epoch_state: false``, a pretrained file that is one of our checkpoints also
    gives its epoch, optimizer, schedule and EMA (not its RNG: this is a new run)."""
    if is_hub_name(cfg.pretrained) or cfg.pretrained == IMAGENET:
        log.info("exclude_epoch_state: false, but %s is not a checkpoint of a run: weights only", cfg.pretrained)
        return None
    obj = read_checkpoint(cfg.pretrained)
    if not (isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("train_state")):
        log.info("exclude_epoch_state: false, but %s holds no training state: weights only", cfg.pretrained)
        return None
    if len(obj.get("class_names") or []) != cfg.num_classes:
        raise ConfigError(
            "exclude_epoch_state: false needs the same classes as the pretrained checkpoint "
            f"({len(obj.get('class_names') or [])}); set exclude_epoch_state: true for transfer learning"
        )
    obj = dict(obj, train_state={**obj["train_state"], "rng": []})
    return obj
