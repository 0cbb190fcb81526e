"""Faults provoked in real training runs, for the tests only (the library has no test hooks).

In process, a test installs a fault with pytest's ``monkeypatch.setattr`` (undone after the test)::

    signal_at_step(monkeypatch.setattr, 3, signal.SIGTERM)  # the process sends itself SIGTERM at step 3
    nan_loss_at_steps(monkeypatch.setattr, range(2, 5))    # the loss of steps 2, 3, 4 is NaN

As a script it runs the ``conformer`` command with the faults its own options ask for, so that a
test can kill a real ``python ... train`` process or watch it exit::

    python tests/fault_entry.py [--kill_at_step N] [--sigterm_at_step N] [--nan_at_step N[:COUNT]] -- train ARGS

``--kill_at_step N``: SIGKILL after step N (before its checkpoint); ``--sigterm_at_step N``: SIGTERM
during step N (the run finishes the step, checkpoints and exits 143); ``--nan_at_step N:COUNT``: the
loss of steps N .. N+COUNT-1 is multiplied by NaN. Steps are global and 1-based, as in the logs.
"""

from __future__ import annotations

import argparse
import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterable
from typing import Any

Patch = Callable[[Any, str, Any], None]  # monkeypatch.setattr, or plain setattr in a child process


def signal_at_step(patch: Patch, step: int, signum: int) -> None:
    """The training process sends itself ``signum`` once step ``step`` is done, before anything
    else looks at it (the stop-signal consensus, the checkpoint due): what a ``kill`` from outside
    arriving during that step does."""
    from conformer_vision.train import Trainer

    on_step = Trainer.on_step

    def signal_then_on_step(self: Trainer, rec: Any) -> bool:
        if rec.step == step:
            os.kill(os.getpid(), signum)
        return on_step(self, rec)

    patch(Trainer, "on_step", signal_then_on_step)


def nan_loss_at_steps(patch: Patch, steps: Iterable[int]) -> None:
    """The loss of each global step in ``steps`` is multiplied by NaN right after the criterion, so
    its backward makes every gradient NaN: what a diverging batch does."""
    from conformer_vision import train

    poisoned, train_one_epoch = frozenset(steps), train.train_one_epoch

    def train_one_epoch_with_nan(parts: Any, batches: Any, *, step: int, **kwargs: Any) -> tuple[int, bool]:
        criterion, numbers = parts.criterion, itertools.count(step + 1)  # one criterion call per step

        def loss(outputs: Any, target: Any) -> Any:
            value = criterion(outputs, target)
            return value * float("nan") if next(numbers) in poisoned else value

        parts.criterion = loss
        try:
            return train_one_epoch(parts, batches, step=step, **kwargs)
        finally:
            parts.criterion = criterion

    patch(train, "train_one_epoch", train_one_epoch_with_nan)


def _steps(value: str) -> range:
    first, _, count = value.partition(":")
    return range(int(first), int(first) + int(count or 1))


def main(argv: list[str]) -> int:
    if "--" not in argv:
        sys.exit("usage: fault_entry.py [fault options] -- COMMAND ARGS (see the module docstring)")
    split = argv.index("--")
    parser = argparse.ArgumentParser(prog="fault_entry.py")
    parser.add_argument("--kill_at_step", type=int)
    parser.add_argument("--sigterm_at_step", type=int)
    parser.add_argument("--nan_at_step", type=_steps)
    faults = parser.parse_args(argv[:split])
    if faults.kill_at_step is not None:
        signal_at_step(setattr, faults.kill_at_step, signal.SIGKILL)
    if faults.sigterm_at_step is not None:
        signal_at_step(setattr, faults.sigterm_at_step, signal.SIGTERM)
    if faults.nan_at_step is not None:
        nan_loss_at_steps(setattr, faults.nan_at_step)
    from conformer_vision.cli import main as conformer

    return conformer(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
