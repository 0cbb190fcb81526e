"""This project's checkpoints: what they hold, how they rotate, how a model is rebuilt from one.

A checkpoint is a plain dict of primitives and tensors (``weights_only`` loadable) that describes
itself, so eval, predict and export rebuild the model from the file alone:

    format: "conformer-vision", version: 1
    arch: variant name, model_args: ConformerArgs as a dict
    class_names: list[str] (index -> name; built once from the training folders)
    preprocess: Preprocess.to_dict() (input size, interpolation, crop_pct, mean, std)
    config: the resolved run config (Config.to_dict())
    model: state dict, ema: EMA state dict or None
    train_state: None, or {optimizer, scheduler, scaler, epoch, step, batch_in_epoch, rng, ...}
    metrics: {name: float} (val top-1 etc. at save time)
"""

from __future__ import annotations

import glob
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError
from .models import Conformer, canonical_name, create_model
from .models.conformer import ALIASES as _ALIASES
from .models.convert import load_state_dict_strict, read_weights, reconcile_model_args
from .rundir import OwnedFiles
from .serialization import atomic_save, partial_writes, read_checkpoint

__all__ = [
    "FORMAT",
    "build_checkpoint",
    "load_model",
    "check_request",
    "CheckpointManager",
    "find_resumable",
    "read_checkpoint",
    "atomic_save",
]

log = logging.getLogger("conformer_vision.checkpoint")

FORMAT = "conformer-vision"
VERSION = 1


def build_checkpoint(
    model: Conformer,
    *,
    class_names: list[str] | None = None,
    preprocess: dict[str, Any] | None = None,
    config: dict[str, Any] | None = None,
    ema_state: dict[str, torch.Tensor] | None = None,
    train_state: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
) -> dict[str, Any]:
    """The checkpoint dict for ``model`` (unwrapped: not DDP, not compiled)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "arch": getattr(model, "variant", None),
        "model_args": model.args.to_dict(),
        "class_names": list(class_names) if class_names is not None else None,
        "preprocess": preprocess,
        "config": config,
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "ema": ema_state,
        "train_state": train_state,
        "metrics": dict(metrics or {}),
    }


@dataclass
class LoadedModel:
    """A model rebuilt from a weights file, with what the file says about it."""

    model: Conformer
    arch: str
    class_names: list[str] | None
    preprocess: dict[str, Any] | None
    config: dict[str, Any] | None = None


CONTRADICTIONS = ("error", "warn", "ignore")
"""What ``load_model`` / ``check_request`` do when a requested arch or class count contradicts a file."""
Policy = str | Mapping[str, str]  # one of CONTRADICTIONS, or one per key ("arch", "num_classes")


def load_model(
    path: str | Path,
    arch: str | None = None,
    num_classes: int | None = None,
    use_ema: bool = False,
    *,
    contradiction: Policy = "error",
    source: Policy = "command line",
    **overrides: Any,
) -> LoadedModel:
    """Rebuild a model from any weights file ``create_model(pretrained=...)`` accepts.

    This project's checkpoints (and safetensors exports) describe their architecture and class count
    and are rebuilt as they say; foreign files (authors', mmpretrain, plain state dicts) need ``arch``
    (the class count is read from the heads). An ``arch`` or ``num_classes`` that contradicts what
    the file holds is never silently dropped: ``contradiction`` "error" raises a ConfigError naming
    both values (an explicit request that this file cannot meet), "warn" logs both and uses the
    file's (e.g. a config file's value that merely differs), "ignore" uses the file's (a default).
    ``source`` says where the request came from, for the messages. ``overrides`` are ConformerArgs
    fields applied on top (e.g. ``fused_attn=False``).
    """
    levels = [contradiction] if isinstance(contradiction, str) else list(contradiction.values())
    if any(level not in CONTRADICTIONS for level in levels):
        raise ValueError(f"contradiction must be one of {CONTRADICTIONS}, got {contradiction!r}")
    sd, meta = read_weights(path, use_ema=use_ema)
    if meta["layout"] == FORMAT:
        # The file's description, with ``overrides`` applied as create_model(pretrained=...) does
        # (an unknown stored field or a structural contradiction is an error, other numerics logged).
        args = reconcile_model_args(meta["model_args"], overrides, str(path), meta.get("arch"))
        name = meta.get("arch") or arch or "conformer"
        check_request(
            path,
            {"arch": meta.get("arch"), "num_classes": args.num_classes},
            {"arch": arch, "num_classes": num_classes},
            contradiction,
            source,
        )
        model = Conformer(args)
        model.variant = name
    else:
        if arch is None:
            raise CheckpointError(
                f"{path} is a {meta['layout']}-layout state dict that does not name its architecture: "
                "pass --arch (e.g. conformer_tiny_patch16)"
            )
        head = sd.get("conv_cls_head.weight")
        held = int(head.shape[0]) if head is not None else None
        check_request(path, {"num_classes": held}, {"num_classes": num_classes}, contradiction, source)
        classes = held or num_classes or 1000
        name = canonical_name(arch)
        model = create_model(name, num_classes=classes, **overrides)
    load_state_dict_strict(model, sd, source=str(path), allow_new_heads=False)
    model.eval()
    return LoadedModel(
        model=model,
        arch=name,
        class_names=meta.get("class_names"),
        preprocess=meta.get("preprocess"),
        config=meta.get("config"),
    )


def check_request(
    path: str | Path,
    held: dict[str, Any],
    asked: dict[str, Any],
    contradiction: Policy = "error",
    source: Policy = "command line",
) -> None:
    """Compare what a caller asks for (``asked``: ``arch`` / ``num_classes``, None = not asked) with
    what the model file at ``path`` holds (``held``, None = not recorded), following
    ``contradiction`` (see ``load_model``; a mapping gives each key its own, like ``source``).
    Architecture names are compared through their aliases (``conformer_tiny`` is
    ``conformer_tiny_patch16``)."""
    holds = ", ".join(f"{key} {have}" for key, have in held.items() if have is not None)
    for key, want in asked.items():
        have = held.get(key)
        level = contradiction if isinstance(contradiction, str) else contradiction.get(key, "error")
        where = source if isinstance(source, str) else source.get(key, "command line")
        if want is None or have is None or level == "ignore" or _same(key, want, have):
            continue
        if level == "error":
            raise ConfigError(
                f"{key} {want} ({where}) contradicts {path}, which holds {holds}: drop --{key} "
                f"(the file records its own) or give a model file with {key} {want}"
            )
        log.warning(
            "%s %s (%s) differs from %s, which holds %s: using the file's %s %s",
            key,
            want,
            where,
            path,
            holds,
            key,
            have,
        )


def _same(key: str, want: Any, have: Any) -> bool:
    if key == "arch":  # ValueError (-> ConfigError in the commands) for a name that is no variant
        return canonical_name(str(want)) == _ALIASES.get(str(have), str(have))
    return int(want) == int(have)


class CheckpointManager:
    """Writes checkpoints and keeps the right ones.

    - ``save_latest``: ``<ckpt_dir>/<prefix>_e{epoch}_s{step}.pt``; keeps the ``keep`` newest.
    - ``save_best``: ``<best_dir>/<prefix>_best_e{epoch}_top1_{acc}.pt``; keeps the ``best_keep``
      highest by val top-1 (ties: the newer wins).
    - ``due(step)``: True when ``every_steps`` steps or ``every_seconds`` seconds have passed since
      the last save (or since ``start_at(step)``, the step the run starts or resumes at).

    Rotation removes only files in ``registry`` (the run's manifest, ``rundir.RunManifest``, or an
    in-memory ``OwnedFiles``): files this run wrote, never another run's checkpoint of the same name
    pattern in a shared folder. A file is listed before it is written; older files are deleted only
    after the new one is completely written; a file of this name that the run did not write is
    never overwritten.
    """

    def __init__(
        self,
        ckpt_dir: str | Path,
        best_dir: str | Path,
        prefix: str = "conformer",
        keep: int = 10,
        best_keep: int = 5,
        every_steps: int = 0,
        every_seconds: float = 0.0,
        enabled: bool = True,
        registry: OwnedFiles | None = None,
    ) -> None:
        self.ckpt_dir, self.best_dir = Path(ckpt_dir), Path(best_dir)
        self.prefix, self.keep, self.best_keep = prefix, keep, best_keep
        self.every_steps, self.every_seconds = every_steps, every_seconds
        self.enabled = enabled
        self.registry = registry if registry is not None else OwnedFiles()
        self._latest_re = re.compile(rf"{re.escape(prefix)}_e(\d+)_s(\d+)\.pt")
        self._best_re = re.compile(rf"{re.escape(prefix)}_best_e(\d+)_top1_([0-9]+\.[0-9]+)\.pt")
        self._last_time = time.monotonic()
        self._last_step = 0

    def start_at(self, step: int) -> None:
        """Count ``every_steps`` from global step ``step``: where the run starts or resumes."""
        self._last_step = step

    def due(self, step: int) -> bool:
        by_steps = self.every_steps > 0 and step - self._last_step >= self.every_steps
        by_time = self.every_seconds > 0 and time.monotonic() - self._last_time >= self.every_seconds
        return by_steps or by_time

    def save_latest(self, ckpt: dict[str, Any], epoch: int, step: int) -> Path | None:
        if not self.enabled:
            return None
        path = self._write(ckpt, self.ckpt_dir / f"{self.prefix}_e{epoch:04d}_s{step:08d}.pt")
        self._last_time, self._last_step = time.monotonic(), step
        for old in self.latest_files()[: -self.keep] if self.keep > 0 else []:
            self._remove(old)
        return path

    def save_best(self, ckpt: dict[str, Any], epoch: int, top1: float) -> Path | None:
        """Save if ``top1`` makes it into the ``best_keep`` best; returns the path if saved
        (``rank_of`` then says where it stands)."""
        if not self.enabled or self.best_keep <= 0:
            return None
        ranked = self.best_files()
        if len(ranked) >= self.best_keep and top1 < ranked[-1][0]:
            return None
        path = self._write(ckpt, self.best_dir / f"{self.prefix}_best_e{epoch:04d}_top1_{top1:.4f}.pt")
        for _, old in self.best_files()[self.best_keep :]:
            self._remove(old)
        return path

    def rank_of(self, path: Path) -> int | None:
        """1-based rank of best checkpoint ``path`` among the kept ones (1 = the best); None if not kept."""
        for rank, (_, kept) in enumerate(self.best_files(), 1):
            if kept == path:
                return rank
        return None

    def _write(self, ckpt: dict[str, Any], path: Path) -> Path:
        """``atomic_save`` to ``path``, listed in the registry first (unlisted again if the write
        fails and the name was new)."""
        owned = self.registry.owns(path)
        if path.exists() and not owned:
            raise CheckpointError(
                f"{path} exists and was not written by this run: not overwriting it; "
                "move it away or choose another ckpt_root_dir / best_ckpt_root_dir"
            )
        self.registry.add(path)
        try:
            return atomic_save(ckpt, path)
        except BaseException:
            if not owned:
                self.registry.discard(path)
            raise

    def _remove(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        self.registry.discard(path)

    def remove_partial_writes(self) -> list[Path]:
        """Delete the hidden temporary files (``.<prefix>_...pt.XXXX.tmp``, see ``atomic_save``) that
        a run killed in the middle of a checkpoint write left in this run's folders; they are never
        complete checkpoints. Returns the removed paths."""
        if not self.enabled:
            return []
        removed = []
        for folder in dict.fromkeys((self.ckpt_dir, self.best_dir)):
            for tmp in partial_writes(folder, f"{glob.escape(self.prefix)}_*.pt"):
                final = tmp.name[1:].rsplit(".", 2)[0]  # .<final name>.XXXX.tmp
                if not (self._latest_re.fullmatch(final) or self._best_re.fullmatch(final)):
                    continue  # a temporary file of another prefix that merely starts like ours
                size = tmp.stat().st_size
                tmp.unlink(missing_ok=True)
                log.info("removed %s (%.1f MB): a checkpoint write an earlier run did not finish", tmp, size / 1e6)
                removed.append(tmp)
        return removed

    def checkpoint_files(self) -> list[Path]:
        """Every file in ``ckpt_dir`` named like this prefix's rotating checkpoints, whoever wrote
        it, oldest first (by epoch, then step in the name)."""
        found = [(m, p) for p in _files(self.ckpt_dir) if (m := self._latest_re.fullmatch(p.name))]
        return [p for m, p in sorted(found, key=lambda t: (int(t[0].group(1)), int(t[0].group(2))))]

    def best_checkpoint_files(self) -> list[Path]:
        """Every file in ``best_dir`` named like this prefix's best checkpoints, whoever wrote it."""
        return sorted(p for p in _files(self.best_dir) if self._best_re.fullmatch(p.name))

    def latest_files(self) -> list[Path]:
        """This run's rotating checkpoints (listed in the registry), oldest first."""
        return [p for p in self.checkpoint_files() if self.registry.owns(p)]

    def best_files(self) -> list[tuple[float, Path]]:
        """(top1, path) of this run's best checkpoints, best first; among equals the newest first."""
        out = []
        for p in self.best_checkpoint_files():
            m = self._best_re.fullmatch(p.name)
            if m and self.registry.owns(p):
                out.append((float(m.group(2)), int(m.group(1)), p))
        return [(acc, p) for acc, _, p in sorted(out, key=lambda t: (-t[0], -t[1]))]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if p.is_file()] if folder.is_dir() else []


def find_resumable(files: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint among ``files`` (oldest first) that has a train state.

    Unreadable newer files (a crash mid-write on a filesystem without atomic rename, a truncated
    copy) are skipped with a warning; never returns None while a readable one exists.
    """
    for path in reversed(files):
        try:
            obj = read_checkpoint(path)
        except CheckpointError as e:
            log.warning("skipping unreadable checkpoint: %s", e)
            continue
        if isinstance(obj, dict) and obj.get("format") == FORMAT and obj.get("train_state"):
            return path, obj
        log.warning("skipping %s: not a resumable conformer-vision checkpoint", path)
    return None
