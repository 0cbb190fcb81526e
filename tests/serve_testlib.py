"""A real ``conformer serve`` process for the serving tests (test_serve.py, test_serve_browser.py).

``Server.start`` runs ``python -m conformer_vision serve MODEL --port 0 ...`` (one compute thread),
reads the URL from its log and waits until ``/readyz`` answers 200; ``stop`` sends SIGTERM and
returns the exit status. The log goes to a file, so a full pipe can never stall the server.
"""

from __future__ import annotations

import copy
import functools
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


class Server:
    """One server process; ``url`` like http://127.0.0.1:PORT."""

    def __init__(self, proc: subprocess.Popen, log_path: Path) -> None:
        self.proc, self.log_path, self.url = proc, log_path, ""

    @classmethod
    def start(cls, model: Path, *options: str, log_path: Path, timeout: float = 180) -> Server:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        env.pop("CONFORMER_API_KEY", None)
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "conformer_vision",
                    "serve",
                    str(model),
                    "--port",
                    "0",
                    "--threads",
                    "1",
                    *options,
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        server = cls(proc, log_path)
        try:
            server._wait_ready(timeout)
        except BaseException:
            server.kill()
            raise
        return server

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _wait_ready(self, timeout: float) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if not self.url:
                found = re.search(r"listening on (http://[^\s:]+:\d+)", self.log())
                self.url = found.group(1) if found else ""
            if self.url:
                try:
                    if httpx.get(f"{self.url}/readyz", timeout=5).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
            time.sleep(0.2)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, then wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text (0.0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def sample_images(fm_root: Path, count: int) -> list[Path]:
    """``count`` real Fashion-MNIST val images, one class after another."""
    classes = sorted(p for p in (fm_root / "val").iterdir() if p.is_dir())
    per_class = [sorted(c.glob("*.png")) for c in classes]
    return [per_class[i % len(classes)][i // len(classes)] for i in range(count)]


def uploads(paths: list[Path]) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx ``files=`` for several images under the field name 'file'."""
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


@functools.cache
def hub_folder(base: Path) -> Path:
    """The inference tests' trained model written by timm's ``save_for_hf`` as a hub-layout folder
    (config.json with the class names and preprocessing, model.safetensors)."""
    import inference_testlib as T
    from timm.models._hub import save_for_hf

    model, classes, pre = T.trained_model(base)
    model = copy.deepcopy(model)  # the shared model stays as it is
    model.pretrained_cfg = {**model.pretrained_cfg, "architecture": model.variant}
    data_config: dict[str, Any] = {
        "input_size": (3, *pre.input_size),
        "interpolation": pre.interpolation,
        "crop_pct": pre.crop_pct,
        "mean": pre.mean,
        "std": pre.std,
    }
    out = base / "hub_mini"
    save_for_hf(
        model, str(out), model_config={"label_names": list(classes)}, safe_serialization=True, data_config=data_config
    )
    return out


@functools.cache
def onnx_model(base: Path) -> Path:
    """The checkpoint exported to ONNX with the TorchScript exporter (seconds instead of ~40 s)."""
    import inference_testlib as T

    from conformer_vision.export import export_model

    with T.one_thread():
        return export_model(
            T.checkpoint(base), file_format="ONNX", output=base / "serve_mini.onnx", exporter="torchscript"
        )
