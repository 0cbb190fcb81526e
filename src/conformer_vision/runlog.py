"""What a training run reports while it runs (rank 0 only): a progress bar, log lines, the
``metrics.jsonl`` file of the run directory and TensorBoard events (schema: ``train.py``).

Epochs are numbered from 1 everywhere a user reads them: the progress bar, the log lines and the
``epoch`` field of ``metrics.jsonl``. The methods take the 0-based epoch index of the loops."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from .rundir import OwnedFiles
from .serialization import write_text_atomic

__all__ = ["RunLog", "truncate_metrics"]

log = logging.getLogger("conformer_vision.train")

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: Path, last_step: int, shift_epochs: int = 0) -> None:
    """Drop the lines of ``path`` written after global step ``last_step`` (a resumed run rewrites
    them), keeping every line that is not valid JSON out as well. ``shift_epochs`` is added to the
    ``epoch`` of the kept lines (1 for a file written before epochs were numbered from 1)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
            if int(record["step"]) <= last_step:
                if shift_epochs and isinstance(record.get("epoch"), int):
                    line = json.dumps({**record, "epoch": record["epoch"] + shift_epochs})
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    write_text_atomic(path, "".join(f"{line}\n" for line in kept))  # a crash keeps the old history whole


class RunLog:
    """Progress bar + log lines + JSONL + TensorBoard. Every method is a no-op when not ``enabled``.

    ``train_step`` takes every step's loss (averaged over ranks) and writes the mean of the
    finite ones: to TensorBoard every ``tb_every`` steps, to the log and ``metrics.jsonl`` every
    ``print_every`` steps, with the learning rate and the images per second (all ranks) since the
    previous line.

    ``registry`` (the run's manifest) gets ``metrics.jsonl`` and the TensorBoard event file listed.
    ``restart``: the run continues its own earlier files (a resume, or a restart from step 0), so
    TensorBoard hides the events after ``start_step`` that the earlier process wrote;
    ``legacy_metrics``: the metrics file was written before epochs were numbered from 1.
    """

    def __init__(
        self,
        run_dir: Path,
        summary_dir: Path,
        *,
        enabled: bool,
        total_steps: int,
        start_step: int,
        print_every: int,
        tb_every: int,
        epochs: int,
        registry: OwnedFiles | None = None,
        restart: bool = False,
        legacy_metrics: bool = False,
    ) -> None:
        self.enabled = enabled
        self.print_every, self.tb_every, self.epochs = print_every, tb_every, epochs
        self._print_acc = _Window()
        self._tb_acc = _Window()
        self._bar: Any = None
        self._tb: Any = None
        self._jsonl: Any = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        from tqdm.auto import tqdm

        registry = registry if registry is not None else OwnedFiles()
        run_dir.mkdir(parents=True, exist_ok=True)
        registry.add(run_dir / METRICS_FILE)
        truncate_metrics(run_dir / METRICS_FILE, start_step, shift_epochs=1 if legacy_metrics else 0)
        self._jsonl = open(run_dir / METRICS_FILE, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        before = set(summary_dir.glob("events.out.tfevents.*"))
        self._tb = SummaryWriter(str(summary_dir), purge_step=start_step + 1 if start_step or restart else None)
        for events in sorted(set(summary_dir.glob("events.out.tfevents.*")) - before):  # the writer's new file
            registry.add(events)
        self._bar = tqdm(total=total_steps, initial=start_step, unit="step", dynamic_ncols=True, leave=True)

    def start_epoch(self, epoch: int) -> None:
        """Name the epoch on the bar; rates restart here (evaluation time is not training time)."""
        if self._bar is not None:
            self._bar.set_description(f"epoch {epoch + 1}/{self.epochs}")
        now = time.perf_counter()
        self._print_acc.since = self._tb_acc.since = now

    def train_step(self, epoch: int, step: int, loss: float, lr: float, images: int, scalars: dict[str, float]) -> None:
        """One step of epoch index ``epoch``: ``loss`` (mean over ranks, maybe non-finite), ``images``
        processed by all ranks."""
        if not self.enabled:
            return
        now = time.perf_counter()
        self._print_acc.add(loss, images, now)
        self._tb_acc.add(loss, images, now)
        self._bar.update(1)
        if step % self.tb_every == 0:
            mean, rate = self._tb_acc.take(now)
            self._tb.add_scalar("train/loss", mean, step)
            self._tb.add_scalar("train/lr", lr, step)
            self._tb.add_scalar("train/images_per_s", rate, step)
            for key, value in scalars.items():
                self._tb.add_scalar(f"train/{key}", value, step)
        if step % self.print_every == 0:
            mean, rate = self._print_acc.take(now)
            self._bar.set_postfix(loss=f"{mean:.4f}", lr=f"{lr:.2e}", img_s=f"{rate:.1f}", refresh=False)
            log.info("epoch %d step %d: loss %.4f lr %.3e %.1f img/s", epoch + 1, step, mean, lr, rate)
            self.write(
                {
                    "kind": "train",
                    "epoch": epoch + 1,
                    "step": step,
                    "loss": mean,
                    "lr": lr,
                    "images_per_s": rate,
                    **scalars,
                }
            )

    def val(self, epoch: int, step: int, metrics: dict[str, float]) -> None:
        """Validation results after epoch index ``epoch`` (``ClassificationMeter`` summary keys,
        ``ema_``-prefixed copies)."""
        if not self.enabled:
            return
        for key, value in metrics.items():
            if key.endswith("num_samples"):
                continue
            self._tb.add_scalar(f"val/{key}", value, step)
        self._tb.flush()
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k in ("Loss", "Top1-Acc", "Top5-Acc", "ema_Top1-Acc")
        )
        log.info("epoch %d step %d: eval %s", epoch + 1, step, shown)
        self.write({"kind": "val", "epoch": epoch + 1, "step": step, **metrics})

    def write(self, record: dict[str, Any]) -> None:
        if self._jsonl is None:
            return
        record = {
            "kind": record["kind"],
            "epoch": record["epoch"],
            "step": record["step"],
            "time": time.time(),
            **{k: v for k, v in record.items() if k not in ("kind", "epoch", "step")},
        }
        self._jsonl.write(json.dumps(_jsonable(record)) + "\n")
        self._jsonl.flush()

    def image_grid(self, tag: str, images: Any, step: int) -> None:
        if self._tb is not None:
            self._tb.add_images(tag, images, step)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._tb is not None:
            self._tb.close()
        if self._jsonl is not None:
            self._jsonl.close()
        self._bar = self._tb = self._jsonl = None


class _Window:
    """Finite-loss mean and image rate since the last ``take``."""

    def __init__(self) -> None:
        self.total, self.count, self.images = 0.0, 0, 0
        self.since = time.perf_counter()

    def add(self, loss: float, images: int, now: float) -> None:
        if math.isfinite(loss):
            self.total += loss
            self.count += 1
        self.images += images

    def take(self, now: float) -> tuple[float, float]:
        mean = self.total / self.count if self.count else float("nan")
        rate = self.images / max(now - self.since, 1e-9)
        self.total, self.count, self.images, self.since = 0.0, 0, 0, now
        return mean, rate


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    """NaN/Inf are not JSON: written as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
