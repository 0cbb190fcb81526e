"""``conformer train --config FILE [--OPTION VALUE ...]``: train or resume a Conformer.

Every option of the configuration is also a command-line flag (the command line wins over the
YAML). Under ``torchrun --nproc_per_node N -m conformer_vision train ...`` each process runs this.
Exit codes: 0 done (also: the run resumed was already finished, which is said), 2 a user error
(printed without a traceback), 143/130 stopped by SIGTERM/SIGINT after writing a checkpoint. Under
torchrun only rank 0 prints the closing line.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..train import TrainResult

HELP = "train a Conformer (every config option is a flag; torchrun for several processes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from .options import add_config_arguments

    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..train import train
    from .options import config_from_args

    cfg = config_from_args(vars(args))
    result = train(cfg)
    if result.is_main:  # under torchrun, rank 0 alone sums up
        print(summary(result, cfg.epochs))
    return result.exit_code


def summary(result: TrainResult, epochs: int) -> str:
    """The last line of ``conformer train``: how the run ended."""
    top1 = result.metrics.get("Top1-Acc")
    shown = f"; val top-1 {top1:.4f}" if top1 is not None else ""
    if result.status == "completed":
        return (
            f"training finished: {result.epochs_done} epochs, {result.step} steps{shown}; "
            f"run directory {result.run_dir}"
        )
    if result.status == "finished":
        more = f" (more than epochs {epochs})" if result.epochs_done > epochs else ""
        return (
            f"the run in {result.run_dir} is already finished: {result.epochs_done} epochs{more}, {result.step} "
            f"steps done{shown}; nothing to do (last checkpoint {result.last_checkpoint}). To train it longer, "
            "resume it with a larger --epochs: the learning-rate schedule is recomputed for the new length"
        )
    return f"training stopped at step {result.step}; resume with --checkpoint auto (last checkpoint: {result.last_checkpoint})"
