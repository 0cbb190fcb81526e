"""``conformer train --config FILE [--OPTION VALUE ...]``: train or resume a Conformer.

Every option of the configuration is also a command-line flag (the command line wins over the
YAML). Under ``torchrun --nproc_per_node N -m conformer_vision train ...`` each process runs this.
Exit codes: 0 done, 2 a user error (printed without a traceback), 143/130 stopped by SIGTERM/SIGINT
after writing a checkpoint.
"""

from __future__ import annotations

import argparse

HELP = "train a Conformer (every config option is a flag; torchrun for several processes)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..config import add_config_arguments

    add_config_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from ..config import config_from_args
    from ..train import train

    cfg = config_from_args(vars(args))
    result = train(cfg)
    if result.status == "completed":
        top1 = result.metrics.get("Top1-Acc")
        shown = f"; val top-1 {top1:.4f}" if top1 is not None else ""
        print(f"training finished: {result.epoch + 1} epochs, {result.step} steps{shown}; run directory {result.run_dir}")
    else:
        print(f"training stopped at step {result.step}; resume with --checkpoint auto "
              f"(last checkpoint: {result.last_checkpoint})")
    return result.exit_code
