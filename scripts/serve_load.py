"""Bounded load test of ``conformer serve`` on loopback, next to the offline speed of the same model.

    PYTHONPATH=src python scripts/serve_load.py [MODEL] [--arch conformer_tiny_patch16] [--image_size 224]
        [--threads 2] [--max_batch_size 8] [--max_wait_ms 10] [--requests 200] [--concurrency 16]
        [--flood 1000] [--images 40] [--json OUT.json]

Without MODEL, --arch is built with seeded random weights and the 10 Fashion-MNIST class names and
exported to ONNX (TorchScript exporter) at --image_size in a temporary folder: throughput does not
depend on trained weights, and answers are compared number for number anyway. Steps, in one run:

1. offline: the same ``runtime.Predictor`` (``open_predictor``, --threads) in this process, on batches of
   --max_batch_size real Fashion-MNIST images (decoded and preprocessed as the server does), median
   images/s of timed batches after warm-up; measured before the server starts and again after it
   stopped (the machine's load can drift), the mean of both is the reference;
2. the server: ``python -m conformer_vision serve MODEL --port 0 --threads T --max_batch_size B
   --max_wait_ms W``, started and waited for (``/readyz``);
3. load: --requests one-image requests (real Fashion-MNIST PNGs at --image_size) from --concurrency
   concurrent clients (httpx, asyncio), after --concurrency warm-up requests that are not counted;
   throughput, p50/p95/p99 latency, errors (anything but 200), mean batch size (from /metrics);
4. flood: --flood malformed requests at the same concurrency (not an image, truncated, empty,
   decompression bomb, body over the limit, no 'file' field, not multipart, bad topk, unknown path):
   every answer must be 4xx; the server's resident memory (VmRSS) before and after;
5. answers after the flood: every image once more through the server, compared with the offline
   predictor (same top-1, probabilities within 1e-5);
6. SIGTERM: the server must exit 0.

The goals (issue 14): served >= 80% of offline at concurrency >= max_batch_size with zero errors; the
flood answered with 4xx only, memory growth < 50 MB, answers correct after it. The exit status is 0
when every goal is met, 1 otherwise. /proc/loadavg is printed at the start and the end: on a shared
machine other jobs change both figures.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from conformer_vision.data import load_rgb, prepare_fashion_mnist  # noqa: E402
from conformer_vision.data.fashion_mnist import FASHION_MNIST_CLASSES  # noqa: E402
from conformer_vision.runtime import open_predictor  # noqa: E402

MAX_BODY_MB = 2  # the server's --max_body_mb here, so oversized bodies stay small on the wire


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", nargs="?", help="checkpoint or .onnx to serve (default: --arch exported to ONNX)")
    p.add_argument("--arch", default="conformer_tiny_patch16", help="variant built when MODEL is not given")
    p.add_argument("--image_size", type=int, default=224, help="model input and uploaded image side")
    p.add_argument("--threads", type=int, default=2, help="compute threads of the model (server and offline)")
    p.add_argument("--max_batch_size", type=int, default=8)
    p.add_argument("--max_wait_ms", type=float, default=10.0)
    p.add_argument("--requests", type=int, default=200, help="measured one-image requests")
    p.add_argument("--concurrency", type=int, default=16, help="concurrent clients (>= --max_batch_size)")
    p.add_argument("--flood", type=int, default=1000, help="malformed requests")
    p.add_argument("--images", type=int, default=40, help="distinct Fashion-MNIST images uploaded")
    p.add_argument("--offline_batches", type=int, default=12, help="timed offline batches (after 2 warm-up)")
    p.add_argument("--json", default=None, help="also write the figures to this JSON file")
    return p.parse_args(argv)


def build_model(arch: str, image_size: int, folder: Path) -> Path:
    """``arch`` with seeded random weights and the Fashion-MNIST class names, exported to ONNX."""
    from conformer_vision.data.transforms import Preprocess
    from conformer_vision.export import export_model
    from conformer_vision.models import create_model

    torch.manual_seed(0)
    model = create_model(arch, num_classes=len(FASHION_MNIST_CLASSES)).eval()
    pre = Preprocess((image_size, image_size))
    return export_model(
        model,
        output=folder / f"{arch}_{image_size}.onnx",
        exporter="torchscript",
        class_names=sorted(FASHION_MNIST_CLASSES),
        preprocess=pre,
    )


def fashion_mnist_images(folder: Path, count: int, size: int) -> list[Path]:
    """``count`` real Fashion-MNIST validation images written as PNGs of ``size`` pixels, classes mixed."""
    per_class = -(-count // len(FASHION_MNIST_CLASSES))
    info = prepare_fashion_mnist(folder / "fm", image_size=size, limit_per_class=per_class, num_workers=1)
    classes = [sorted((Path(info["val_dir"]) / c).glob("*.png")) for c in info["classes"]]
    return [classes[i % len(classes)][i // len(classes)] for i in range(count)]


def offline_speed(model: Path, threads: int, images: list[Path], batch_size: int, batches: int) -> float:
    """Median images/s of ``predictor.fused`` on batches of ``batch_size`` preprocessed images."""
    predictor = open_predictor(model, threads=threads)
    transform = predictor.preprocess.eval_transform()
    tensors = torch.stack([transform(load_rgb(p)) for p in images])
    batch = tensors[torch.arange(batch_size) % len(tensors)]
    for _ in range(2):
        predictor.fused(batch)
    times = []
    for _ in range(batches):
        start = time.perf_counter()
        predictor.fused(batch)
        times.append(time.perf_counter() - start)
    return batch_size / statistics.median(times)


def offline_answers(model: Path, threads: int, images: list[Path]) -> list[list[dict[str, Any]]]:
    """Top-5 of each image through the offline predictor (``predict --topk``'s numbers)."""
    from conformer_vision.predict import predict_paths

    results, errors = predict_paths(open_predictor(model, threads=threads), images, topk=5, batch_size=8)
    assert not errors, errors
    return [results[str(p)] for p in images]


class Server:
    """``conformer serve`` as a child process (log in a file); ``url``, ``rss_mb()``, ``stop()``."""

    def __init__(self, model: Path, args: argparse.Namespace, log_path: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "PYTHONUNBUFFERED": "1"}
        command = [
            sys.executable,
            "-m",
            "conformer_vision",
            "serve",
            str(model),
            "--port",
            "0",
            "--threads",
            str(args.threads),
            "--max_batch_size",
            str(args.max_batch_size),
            "--max_wait_ms",
            str(args.max_wait_ms),
            "--max_queue",
            str(max(64, 2 * args.concurrency)),
            "--max_body_mb",
            str(MAX_BODY_MB),
            "--timeout_s",
            "120",
        ]
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.url = self._wait_ready(300)

    def _wait_ready(self, timeout: float) -> str:
        import httpx

        end, url = time.monotonic() + timeout, ""
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise SystemExit(f"the server exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            found = re.search(r"listening on (http://\S+:\d+)", self.log_path.read_text(errors="replace"))
            url = found.group(1) if found else ""
            if url:
                try:
                    if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                        return url
                except httpx.TransportError:
                    pass
            time.sleep(0.25)
        raise SystemExit(f"the server was not ready after {timeout} s")

    def rss_mb(self) -> float:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


async def load(url: str, images: list[bytes], requests: int, concurrency: int) -> dict[str, Any]:
    """``requests`` one-image requests from ``concurrency`` clients: throughput, latency, errors."""
    import httpx

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            start = time.perf_counter()
            r = await http.post(
                f"{url}/v1/predict", files=[("file", (f"{i}.png", images[i % len(images)], "image/png"))]
            )
            latencies.append(time.perf_counter() - start)
            statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return {
        "requests": requests,
        "concurrency": concurrency,
        "seconds": wall,
        "images_per_s": requests / wall,
        "p50_ms": 1000 * q[49],
        "p95_ms": 1000 * q[94],
        "p99_ms": 1000 * q[98],
        "errors": requests - statuses.get(200, 0),
        "statuses": statuses,
    }


def malformed_requests(good: bytes) -> list[dict[str, Any]]:
    """Keyword arguments of httpx requests that are all wrong in some way (one of each kind)."""
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("L", (20000, 20000)).save(bomb, format="PNG")  # 0.4 MB on the wire, 400 Mpixel decoded
    one = lambda name, data: {"files": [("file", (name, data, "image/png"))]}  # noqa: E731
    return [
        one("notes.png", b"this is not an image\n" * 20),
        one("truncated.png", good[: len(good) // 2]),
        one("empty.png", b""),
        one("bomb.png", bomb.getvalue()),
        one("huge.png", b"\0" * int((MAX_BODY_MB + 0.5) * 2**20)),
        {"files": [("image", ("a.png", good, "image/png"))]},
        {"content": good, "headers": {"Content-Type": "image/png"}},
        {**one("a.png", good), "params": {"topk": "0"}},
        {**one("a.png", good), "path": "/v1/nothing-here"},
    ]


async def flood(url: str, good: bytes, count: int, concurrency: int) -> dict[str, Any]:
    """``count`` malformed requests, the kinds in turn; the answers' status codes."""
    import httpx

    kinds = malformed_requests(good)
    statuses: dict[int, int] = {}
    failures: list[str] = []
    counter = iter(range(count))

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            kw = dict(kinds[i % len(kinds)])
            path = kw.pop("path", "/v1/predict")
            try:
                r = await http.post(url + path, **kw)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
            except httpx.TransportError as e:  # a closed connection instead of an answer counts as a failure
                failures.append(f"{type(e).__name__}: {e}")

    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=concurrency)) as http:
        start = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return {
        "requests": count,
        "seconds": wall,
        "statuses": statuses,
        "transport_failures": len(failures),
        "only_4xx": not failures and all(400 <= s < 500 for s in statuses),
    }


def check_answers(url: str, images: list[Path], expected: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """Every image through the server once more: same top-1, probabilities within 1e-5."""
    import httpx

    worst, same_top1 = 0.0, 0
    for path, want in zip(images, expected):
        r = httpx.post(f"{url}/v1/predict", files=[("file", (path.name, path.read_bytes(), "image/png"))], timeout=120)
        got = r.json()["predictions"][0]
        same_top1 += got[0]["class"] == want[0]["class"]
        want_probs = {e["class"]: e["prob"] for e in want}
        worst = max([worst] + [abs(e["prob"] - want_probs.get(e["class"], -1.0)) for e in got])
    return {
        "images": len(images),
        "same_top1": same_top1,
        "max_prob_diff": worst,
        "correct": same_top1 == len(images) and worst < 1e-5,
    }


def metric_sum(url: str, name: str) -> float:
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return re.search(r"Model name:\s+(.+)", out).group(1).strip()
    except (OSError, AttributeError):
        return "unknown CPU"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {
        "cpu": cpu_name(),
        "cores": os.cpu_count(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
    }
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        folder = Path(tmp)
        model = Path(args.model) if args.model else build_model(args.arch, args.image_size, folder)
        images = fashion_mnist_images(folder, args.images, args.image_size)
        payloads = [p.read_bytes() for p in images]
        report.update(
            model=model.name,
            threads=args.threads,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            upload_bytes_mean=statistics.mean(map(len, payloads)),
        )
        print(
            f"model {model.name}, {args.threads} threads, {report['cpu']}, load {report['loadavg_start']}", flush=True
        )
        before = offline_speed(model, args.threads, images, args.max_batch_size, args.offline_batches)
        expected = offline_answers(model, args.threads, images)
        print(f"offline (before): {before:.2f} images/s at batch {args.max_batch_size}", flush=True)
        server = Server(model, args, folder / "server.log")
        try:
            asyncio.run(load(server.url, payloads, args.concurrency, args.concurrency))  # warm-up, not counted
            batches0, images0 = (
                metric_sum(server.url, "conformer_batch_size_count"),
                metric_sum(server.url, "conformer_batch_size_sum"),
            )
            served = asyncio.run(load(server.url, payloads, args.requests, args.concurrency))
            batches = metric_sum(server.url, "conformer_batch_size_count") - batches0
            served["mean_batch_size"] = (metric_sum(server.url, "conformer_batch_size_sum") - images0) / max(batches, 1)
            print(
                f"served: {served['images_per_s']:.2f} images/s, p50 {served['p50_ms']:.0f} ms, p95 "
                f"{served['p95_ms']:.0f} ms, p99 {served['p99_ms']:.0f} ms, errors {served['errors']}, "
                f"mean batch {served['mean_batch_size']:.2f}",
                flush=True,
            )
            rss_before = server.rss_mb()
            flooded = asyncio.run(flood(server.url, payloads[0], args.flood, args.concurrency))
            flooded.update(rss_before_mb=rss_before, rss_after_mb=server.rss_mb())
            flooded["rss_growth_mb"] = flooded["rss_after_mb"] - rss_before
            print(
                f"flood: {flooded['requests']} malformed requests in {flooded['seconds']:.1f} s, statuses "
                f"{flooded['statuses']}, RSS {rss_before:.0f} -> {flooded['rss_after_mb']:.0f} MB",
                flush=True,
            )
            after_flood = check_answers(server.url, images, expected)
            print(
                f"answers after the flood: {after_flood['same_top1']}/{after_flood['images']} same top-1, "
                f"max |prob diff| {after_flood['max_prob_diff']:.1e}",
                flush=True,
            )
        finally:
            exit_code = server.stop()
        after = offline_speed(model, args.threads, images, args.max_batch_size, args.offline_batches)
        print(f"offline (after): {after:.2f} images/s; server exit status {exit_code}", flush=True)
    offline = (before + after) / 2
    ratio = served["images_per_s"] / offline
    goals = {
        "served >= 80% of offline": ratio >= 0.8,
        "zero errors under load": served["errors"] == 0,
        "concurrency >= max_batch_size": args.concurrency >= args.max_batch_size,
        "flood: 4xx only": flooded["only_4xx"],
        "flood: RSS growth < 50 MB": flooded["rss_growth_mb"] < 50,
        "answers correct after the flood": after_flood["correct"],
        "SIGTERM: exit 0": exit_code == 0,
    }
    report.update(
        offline_before=before,
        offline_after=after,
        offline_images_per_s=offline,
        served=served,
        served_over_offline=ratio,
        flood=flooded,
        after_flood=after_flood,
        server_exit=exit_code,
        goals=goals,
        loadavg_end=Path("/proc/loadavg").read_text().split()[:3],
    )
    print(
        f"\nserved / offline = {ratio:.1%} ({served['images_per_s']:.2f} / {offline:.2f} images/s); "
        f"load average at the end {report['loadavg_end']}"
    )
    for goal, met in goals.items():
        print(f"  {'met ' if met else 'MISSED'}  {goal}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
