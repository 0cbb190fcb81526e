"""Speed of a Conformer: images/s, latency, peak memory, GFLOPs and the achieved fraction of GEMM peak.

One configuration (``BenchmarkSpec``: variant, batch, input size, infer/train, backend, autocast
dtype, network) is timed as: build, warm up (``torch.compile`` and ONNX export happen here
and are timed separately), then ``runs`` timed steps; images/s is batch / median step time.
``compare`` times several configurations SIDE BY SIDE: built once each, then timed in interleaved
rounds (A B C, A B C, ...), so that a shared, noisy machine slows all of them alike and the
ratios stay meaningful.

What one step is:

* ``infer``, eager/compile: ``net(x)`` under ``torch.inference_mode()`` (and autocast), where
  ``net`` is the ``network`` (``NETWORKS``): 'reference' = the model exactly as the authors wrote
  it (explicit softmax attention, NCHW, every BatchNorm unfused, eval mode), 'model' = the model as
  built (timm's default fused attention), 'optimized' = ``optimize_for_inference(model)`` (what
  ``predict``, ``eval`` and the ``Predictor`` run). ``torch.compile`` compiles that network.
* ``infer``, onnxruntime: ``session.run`` (``ONNX_VARIANTS``): 'plain' = ``torch.onnx.export`` of
  the reference network in a default session (only its intra-op threads set to ``threads``,
  like every other row: onnxruntime's own default is one thread per core); 'tuned' = this project's
  export of the default network (``export.export_model``) in a session with ORT_ENABLE_ALL and
  intra-op threads = ``threads``; 'int8' = the tuned graph after int8 dynamic quantisation, 'int8_static' = after int8
  static (QDQ) quantisation calibrated on real images (``quantize.quantize_onnx``, the implementation
  ``conformer export --quantize`` uses; calibration: ``compare``).
* ``train``: ``engine.train_step``, the trainer's own update: autocast ``forward_heads``, the
  two-head cross-entropy (mean of the heads), backward, global grad norm, AdamW step; the
  'reference' network uses explicit attention and PyTorch's default (per-tensor) AdamW, 'model'
  the trainer's fused AdamW ('optimized' is inference only).

GFLOPs are counted by ``torch.utils.flop_counter`` (a multiply-add = 2 FLOPs; convolutions and
matrix products only, attention included) on the meta device for the reference network: the
forward pass for ``infer``, forward + backward for ``train``. The GEMM peak is measured in the same process: ``torch.mm`` of two 2048x2048 matrices
in the step's dtype (8192 on a GPU), or an onnxruntime ``MatMul`` (fp32) / ``MatMulInteger``
(int8) graph built with ``onnx.helper``; ``peak_fraction`` = achieved model GFLOP/s / that peak.

Peak memory, over the first (untimed) step: on the CPU the process's resident-set high-water mark
(``VmHWM``, reset through ``/proc/self/clear_refs`` just before) and its increase over the resident
size before the step (activations, workspaces, caches: meaningful for one configuration per
process); on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import dataclasses
import resource
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .runtime import AMP_LEVELS

__all__ = [
    "BenchmarkSpec", "BenchmarkResult", "MODES", "BACKENDS", "NETWORKS", "AMP_LEVELS", "ONNX_VARIANTS", "COMPARE_PRESETS",
    "run_benchmark", "compare", "gemm_peak", "count_gflops", "format_result", "format_comparison", "parse_preset",
    "fashion_mnist_batch", "export_onnx",
]  # fmt: skip

MODES = ("infer", "train")
BACKENDS = ("eager", "compile", "onnxruntime")
NETWORKS = ("reference", "model", "optimized")
ONNX_VARIANTS = ("tuned", "plain", "int8", "int8_static")
ONNX_QUANTIZE = {"int8": "int8_dynamic", "int8_static": "int8_static"}  # ONNX variant -> quantize.quantize_onnx mode
CALIBRATION_IMAGES = 64  # Fashion-MNIST *train* images calibrating 'int8_static' (agreement uses test images)
FLOP_COUNTER = "torch.utils.flop_counter"

COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    "reference": {"network": "reference"},  # the authors' network, eager fp32
    "eager": {},  # the model as built, eager fp32
    "optimized": {"network": "optimized"},  # optimize_for_inference(model), eager fp32
    "bf16": {"amp": "bf16"},
    "fp16": {"amp": "fp16"},
    "compile": {"backend": "compile"},
    "compile_bf16": {"backend": "compile", "amp": "bf16"},
    "bf16_cl": {"amp": "bf16", "channels_last": True},
    "compile_bf16_cl": {"backend": "compile", "amp": "bf16", "channels_last": True},
    "onnx_plain": {"backend": "onnxruntime", "onnx": "plain"},
    "onnxruntime": {"backend": "onnxruntime", "onnx": "tuned"},
    "onnx_int8": {"backend": "onnxruntime", "onnx": "int8"},
    "onnx_int8_static": {"backend": "onnxruntime", "onnx": "int8_static"},
}
"""Names for ``--compare``: overrides applied to the command's base configuration. In inference,
the autocast and compile entries (``OPTIMIZED_PRESETS``) time ``optimize_for_inference(model)``;
in training, the model."""
OPTIMIZED_PRESETS = ("bf16", "fp16", "compile", "compile_bf16", "bf16_cl", "compile_bf16_cl")


@dataclass(frozen=True)
class BenchmarkSpec:
    """One configuration to time.

    Attributes:
        arch: variant name (``models.list_models()`` or an alias).
        batch_size: images per step.
        image_size: side of the square input.
        mode: 'infer' or 'train'.
        backend: 'eager', 'compile' (``torch.compile``) or 'onnxruntime' (infer only, CPU).
        amp: 'O0' (float32), 'bf16' or 'fp16' autocast (eager/compile only).
        network: 'reference', 'model' or 'optimized' (module docstring; eager/compile only).
        onnx: for onnxruntime: 'tuned', 'plain', 'int8' (dynamic) or 'int8_static' (module docstring).
        device: 'cpu' or 'cuda' ('cuda:N').
        channels_last: store the weights and inputs channels_last (eager/compile; 'optimized' has
            channels_last weights by default, ``optimize_for_inference``).
        num_classes: classes of the heads.
        checkpoint: weights to load (any file ``checkpoint.load_model`` reads); None = random init.
        grad_checkpointing: train with ``set_grad_checkpointing()`` (each block recomputed in the
            backward pass instead of storing its activations: less memory, more compute).
    """

    arch: str = "conformer_tiny_patch16"
    batch_size: int = 8
    image_size: int = 224
    mode: str = "infer"
    backend: str = "eager"
    amp: str = "O0"
    network: str = "model"
    onnx: str = "tuned"
    device: str = "cpu"
    channels_last: bool = False
    num_classes: int = 1000
    checkpoint: str | None = None
    grad_checkpointing: bool = False

    def __post_init__(self) -> None:
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}"),
            (self.amp in AMP_LEVELS, f"amp must be one of {tuple(AMP_LEVELS)}, got {self.amp!r}"),
            (self.onnx in ONNX_VARIANTS, f"onnx must be one of {ONNX_VARIANTS}, got {self.onnx!r}"),
            (self.batch_size >= 1 and self.image_size >= 16, "batch_size must be >= 1 and image_size >= 16"),
            (not (self.backend == "onnxruntime" and self.mode == "train"), "onnxruntime is inference only: use --mode infer"),
            (not (self.backend == "onnxruntime" and self.amp != "O0"), "onnxruntime runs the float32 graph: use --amp O0 "
             "(the int8 variant is --onnx int8)"),
            (not (self.backend == "onnxruntime" and self.device != "cpu"), "the onnxruntime benchmark runs on the CPU"),
            (self.network in NETWORKS, f"network must be one of {NETWORKS}, got {self.network!r}"),
            (not (self.network == "reference" and (self.amp != "O0" or self.backend != "eager" or self.channels_last)),
             "the reference network is plain eager float32 NCHW: drop --amp/--backend/--channels_last or "
             "--network reference"),
            (not (self.network == "optimized" and self.mode == "train"), "optimize_for_inference makes an inference "
             "copy: use --network model (or reference) with --mode train"),
            (not (self.backend == "onnxruntime" and self.network != "model"), "--network applies to PyTorch backends: "
             "the onnxruntime graphs are chosen with --onnx"),
            (not (self.grad_checkpointing and self.mode != "train"), "--grad_checkpointing applies to --mode train"),
            (not (self.backend == "onnxruntime" and self.channels_last), "--channels_last applies to PyTorch backends"),
        ]  # fmt: skip
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def label(self) -> str:
        """Short name, e.g. 'reference', 'eager fp32', 'eager optimized bf16', 'onnxruntime int8'."""
        if self.network == "reference":
            return "reference"
        if self.backend == "onnxruntime":
            return f"onnxruntime {self.onnx}"
        net = " optimized" if self.network == "optimized" else ""
        cl = " channels_last" if self.channels_last else ""
        ckpt = " grad-checkpointing" if self.grad_checkpointing else ""
        return f"{self.backend}{net} {'fp32' if self.amp == 'O0' else self.amp}{cl}{ckpt}"


@dataclass
class BenchmarkResult:
    """Figures of one configuration; ``to_dict`` gives plain JSON values."""

    spec: BenchmarkSpec
    threads: int
    times_s: list[float]
    params: int
    gflops_per_image: float
    gemm_peak_gflops: float
    gemm_peak_label: str
    peak_memory_mb: float
    memory_increase_mb: float
    memory_label: str
    setup_s: float = 0.0
    setup_label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.spec.batch_size / statistics.median(self.times_s)

    @property
    def best_images_per_s(self) -> float:
        return self.spec.batch_size / min(self.times_s)

    @property
    def latency_ms(self) -> float:
        return 1000 * statistics.median(self.times_s)

    @property
    def achieved_gflops(self) -> float:
        return self.gflops_per_image * self.images_per_s

    @property
    def peak_fraction(self) -> float:
        return self.achieved_gflops / self.gemm_peak_gflops if self.gemm_peak_gflops else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "spec"}
        out.update(spec=dataclasses.asdict(self.spec), label=self.spec.label, flop_counter=FLOP_COUNTER)
        for name in ("images_per_s", "best_images_per_s", "latency_ms", "achieved_gflops", "peak_fraction"):
            out[name] = getattr(self, name)
        return out


# ---------------------------------------------------------------------------------------------
# Cost model: FLOPs and the machine's GEMM peak


def count_gflops(spec: BenchmarkSpec) -> tuple[int, float]:
    """(parameters, GFLOPs per image) of ``spec``'s step, counted on the meta device by
    torch.utils.flop_counter: forward for 'infer', forward + backward for 'train'."""
    from torch.utils.flop_counter import FlopCounterMode

    from .models import create_model

    model = create_model(spec.arch, num_classes=spec.num_classes, device="meta")
    model.set_fused_attn(False)  # explicit attention: the counter does not see the CPU SDPA kernel
    model.train(spec.mode == "train")
    x = torch.zeros(spec.batch_size, 3, spec.image_size, spec.image_size, device="meta")
    with FlopCounterMode(display=False) as counter, torch.set_grad_enabled(spec.mode == "train"):
        conv, trans = model.forward_heads(x)
        if spec.mode == "train":
            (conv.sum() + trans.sum()).backward()
    params = sum(p.numel() for p in model.parameters())
    return params, counter.get_total_flops() / spec.batch_size / 1e9


def gemm_peak(kind: str, device: str = "cpu", n: int | None = None, reps: int = 5) -> tuple[float, str]:
    """(GFLOP/s, description) of a square matrix product on this machine, now (median of ``reps``).

    ``kind``: 'fp32', 'bf16', 'fp16' (``torch.mm`` on ``device``), 'ort_fp32' (onnxruntime MatMul) or
    'ort_int8' (onnxruntime MatMulInteger, uint8 x int8 -> int32; "GFLOP/s" = 2 n^3 ops / s).
    """
    timer, flops, label = _gemm_timer(kind, device, n)
    timer()
    return flops / statistics.median(timer() for _ in range(reps)) / 1e9, label


def _gemm_timer(kind: str, device: str = "cpu", n: int | None = None) -> tuple[Callable[[], float], float, str]:
    """(a function timing one product in seconds, its FLOPs, a description)."""
    if kind.startswith("ort_"):
        return _ort_gemm_timer(kind[4:], n or 2048)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    dev = torch.device(device)
    n = n or (8192 if dev.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=dev).to(dtype) for _ in range(2))
    out = torch.empty(n, n, device=dev, dtype=dtype)

    def timer() -> float:
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    threads = "" if dev.type == "cuda" else f", {torch.get_num_threads()} threads"
    return timer, 2.0 * n**3, f"torch.mm {kind} {n}^3 on {dev.type}{threads}"


def _ort_gemm_timer(kind: str, n: int) -> tuple[Callable[[], float], float, str]:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        op, types = "MatMul", (TensorProto.FLOAT,) * 3
        arrays = [rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)]
    else:
        op, types = "MatMulInteger", (TensorProto.UINT8, TensorProto.INT8, TensorProto.INT32)
        arrays = [rng.integers(0, 255, (n, n), dtype=np.uint8), rng.integers(-127, 127, (n, n), dtype=np.int8)]
    graph = helper.make_graph(
        [helper.make_node(op, ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", types[0], [n, n]), helper.make_tensor_value_info("b", types[1], [n, n])],
        [helper.make_tensor_value_info("c", types[2], [n, n])],
    )  # fmt: skip
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(proto.SerializeToString(), _ort_options(), providers=["CPUExecutionProvider"])
    feed = {"a": arrays[0], "b": arrays[1]}

    def timer() -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return time.perf_counter() - start

    return timer, 2.0 * n**3, f"onnxruntime {op} {kind} {n}^3, {_ort_threads()} threads"


def _gemm_kind(spec: BenchmarkSpec) -> str:
    if spec.backend == "onnxruntime":
        return "ort_int8" if spec.onnx in ONNX_QUANTIZE else "ort_fp32"
    return {"O0": "fp32", "bf16": "bf16", "fp16": "fp16"}[spec.amp]


# ---------------------------------------------------------------------------------------------
# Memory


def _proc_status(key: str) -> float | None:
    """A ``/proc/self/status`` entry in MB (None where there is no procfs)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class _MemoryProbe:
    """Peak memory of what runs between ``start`` and ``stop`` (module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.label = "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process RSS high-water (VmHWM)"
        self.before = 0.0

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before = torch.cuda.memory_allocated(self.device) / 2**20
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset the high-water mark to the current resident size
        except OSError:
            self.label = "process peak RSS since start (ru_maxrss)"
        self.before = _proc_status("VmRSS") or 0.0

    def stop(self) -> tuple[float, float]:
        """(peak MB, increase over the start MB)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _proc_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, max(peak - self.before, 0.0)


# ---------------------------------------------------------------------------------------------
# Runners: one callable step per configuration


@dataclass
class _Runner:
    """A built configuration: ``step()`` runs one timed step; ``predict(x)`` -> fused logits (B, K)
    float32 on the CPU (inference only); ``setup_s`` is the compile or export time."""

    spec: BenchmarkSpec
    step: Callable[[], Any]
    sync: Callable[[], None]
    device: torch.device
    predict: Callable[[torch.Tensor], torch.Tensor] | None = None
    setup_s: float = 0.0
    setup_label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _ort_threads() -> int:
    return torch.get_num_threads()


def _ort_options() -> Any:
    """The tuned onnxruntime session options: every graph optimisation (ORT_ENABLE_ALL: constant
    folding, Conv+BatchNorm+ReLU fusion, NCHWc convolution layout, GELU/LayerNorm fusions) and
    intra-op threads = torch's thread count (``--threads``, default the cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = _ort_threads()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return options


def _base_model(spec: BenchmarkSpec) -> nn.Module:
    """The network of ``spec``: the checkpoint's weights, or a seeded random initialisation."""
    if spec.checkpoint:
        from .checkpoint import load_model

        return load_model(spec.checkpoint, arch=spec.arch).model.float()
    from .models import create_model

    torch.manual_seed(0)
    try:
        return create_model(spec.arch, num_classes=spec.num_classes)
    except ValueError as e:  # unknown variant name
        raise ConfigError(str(e)) from None


def _torch_runner(spec: BenchmarkSpec, model: nn.Module, x: torch.Tensor) -> _Runner:
    """eager / compile, infer / train, of the spec's network (module docstring)."""
    from .models import optimize_for_inference

    dev = x.device
    model = model.to(dev)
    if spec.network == "reference":
        model.set_fused_attn(False)  # the authors' explicit softmax attention
    amp = AMP_LEVELS[spec.amp]
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    if spec.network == "optimized":
        model = optimize_for_inference(model)  # channels_last weights; --channels_last converts the inputs too
    elif spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if spec.mode == "train":
        runner = _Runner(spec, _train_step_fn(spec, model, x), sync, dev)
    else:
        net = torch.compile(model.eval()) if spec.backend == "compile" else model.eval()

        def forward(inp: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(dev.type, dtype=amp or torch.float32, enabled=amp is not None):
                return net(inp.to(dev))

        runner = _Runner(spec, lambda: forward(x), sync, dev, predict=lambda inp: forward(inp).float().cpu())
    step = runner.step
    if spec.backend == "compile":
        start = time.perf_counter()
        step()
        sync()
        runner.setup_s, runner.setup_label = time.perf_counter() - start, "torch.compile (first call)"
    return runner


def _train_step_fn(spec: BenchmarkSpec, model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """The trainer's update (``engine.train_step``): AdamW (lr 1e-4, wd 0.05), mean two-head CE.
    The reference network uses PyTorch's default AdamW (a per-tensor loop on the CPU), the model the
    trainer's fused one."""
    from .engine import BothHeads, TrainParts, train_step
    from .losses import TwoHeadLoss
    from .optim import build_optimizer

    model.train()
    model.set_grad_checkpointing(spec.grad_checkpointing)
    net: nn.Module = BothHeads(model)
    if spec.backend == "compile":
        net = torch.compile(net)
    scaler = torch.amp.GradScaler(x.device.type) if spec.amp == "fp16" else None
    parts = TrainParts(
        model=net, criterion=TwoHeadLoss(nn.CrossEntropyLoss()), scheduler=None, device=x.device,
        optimizer=build_optimizer(model, "adamw", lr=1e-4, weight_decay=0.05, fused=spec.network != "reference"),
        amp_dtype=AMP_LEVELS[spec.amp], scaler=scaler,
    )  # fmt: skip
    target = torch.randint(0, spec.num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)
    return lambda: train_step(parts, x, target)


def export_onnx(model: nn.Module, path: Path) -> Path:
    """``model`` -> ONNX at ``path`` through the project's exporter (``export.export_model`` with the
    TorchScript exporter: as fast a graph as the dynamo exporter's, exported ~10x faster), without
    its self-check (the export tests cover it)."""
    from .export import export_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return export_model(model, file_format="ONNX", output=path, check=False, exporter="torchscript")


def _onnx_file(spec: BenchmarkSpec, model: nn.Module, workdir: Path, cache: dict[str, Any]) -> tuple[Path, float]:
    """The exported graph and its export time: of the reference network for 'plain', this project's
    export of the model otherwise (shared by the ONNX variants of one comparison)."""
    plain = spec.onnx == "plain"
    key = f"{spec.arch}-{spec.num_classes}-{spec.checkpoint}-{plain}"
    if key not in cache:
        start = time.perf_counter()
        if plain:
            model.set_fused_attn(False)
            path = _plain_export(model.eval(), workdir / f"{spec.arch}.plain.onnx", spec.image_size)
        else:
            path = export_onnx(model.eval(), workdir / f"{spec.arch}.onnx")
        cache[key] = (path, time.perf_counter() - start)
    return cache[key]


def _plain_export(model: nn.Module, path: Path, image_size: int) -> Path:
    """The baseline: ``torch.onnx.export`` of the reference network, dynamic batch,
    with the same (TorchScript) exporter and opset as ``export_onnx`` and nothing else."""
    from .export import ExportWrapper

    x = torch.zeros(1, 3, image_size, image_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ExportWrapper(model).eval(), (x,), str(path), dynamo=False, opset_version=18,
                          input_names=["input"], output_names=["logits", "conv_logits", "trans_logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})  # fmt: skip
    return path


def _onnx_runner(spec: BenchmarkSpec, model: nn.Module, x: torch.Tensor, workdir: Path, cache: dict[str, Any]) -> _Runner:
    """onnxruntime on the CPU: 'plain' default session (same threads), 'tuned' session, 'int8' / 'int8_static' quantised."""
    import onnxruntime as ort

    from .quantize import quantize_onnx

    path, export_s = _onnx_file(spec, model, workdir, cache)
    extra: dict[str, Any] = {"export_s": export_s}
    start = time.perf_counter()
    if spec.onnx == "plain":
        options = ort.SessionOptions()
        options.intra_op_num_threads = _ort_threads()  # the only setting: compare graphs on equal cores
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    else:
        if spec.onnx in ONNX_QUANTIZE:
            mode = ONNX_QUANTIZE[spec.onnx]
            calibration = cache.get("calibration") if mode == "int8_static" else None
            path = quantize_onnx(path, path.with_name(f"{path.stem}.{mode}.onnx"), mode, calibration)
            extra["quantize_s"] = time.perf_counter() - start
            if calibration is not None:
                extra["calibration_images"] = len(calibration)
        session = ort.InferenceSession(str(path), _ort_options(), providers=["CPUExecutionProvider"])
    extra["session_s"] = time.perf_counter() - start
    name = session.get_inputs()[0].name
    feed = {name: x.numpy()}

    def predict(inp: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(["logits"], {name: inp.numpy().astype(np.float32)})[0])

    step = lambda: session.run(["logits"], feed)  # noqa: E731
    label = "ONNX export" + (f" + {ONNX_QUANTIZE[spec.onnx]} quantisation" if spec.onnx in ONNX_QUANTIZE else "")
    return _Runner(spec, step, lambda: None, torch.device("cpu"), predict, export_s + extra.get("quantize_s", 0.0),
                   label, extra)  # fmt: skip


def _build(spec: BenchmarkSpec, models: dict[str, nn.Module], workdir: Path, cache: dict[str, Any]) -> _Runner:
    import copy

    key = f"{spec.arch}-{spec.num_classes}-{spec.checkpoint}"
    if key not in models:
        models[key] = _base_model(spec)
    model = copy.deepcopy(models[key])
    dev = torch.device(spec.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but CUDA is not available here; use --device cpu")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(spec.batch_size, 3, spec.image_size, spec.image_size, generator=g).to(dev)
    if spec.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    if spec.backend == "onnxruntime":
        return _onnx_runner(spec, model, x, workdir, cache)
    return _torch_runner(spec, model, x)


# ---------------------------------------------------------------------------------------------
# Timing


def compare(
    specs: Sequence[BenchmarkSpec],
    threads: int | None = None,
    warmup: int = 2,
    runs: int = 5,
    agreement_images: torch.Tensor | None = None,
    workdir: str | Path | None = None,
    calibration_images: torch.Tensor | None = None,
) -> list[BenchmarkResult]:
    """Time ``specs`` side by side in this process: build all (compile/export timed), run each
    ``max(warmup, 1)`` untimed steps (the first one's peak memory is measured), then ``runs``
    interleaved rounds of one step each, plus three GEMM-peak products per dtype per round (so model
    and peak see the same machine load). With ``agreement_images`` (N, 3, S, S), the top-1 agreement of every
    inference configuration with the first one is measured on them (``extra['top1_agreement']``).
    ``calibration_images`` (N, 3, S, S) calibrate the 'int8_static' ONNX variant; by default
    ``CALIBRATION_IMAGES`` Fashion-MNIST train images (``fashion_mnist_batch(split='train')``), so they
    never overlap the agreement images, which are test images.
    """
    if not specs:
        raise ConfigError("nothing to benchmark")
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="conformer-bench-") as tmp:
        models: dict[str, nn.Module] = {}
        cache: dict[str, Any] = {}
        if any(s.backend == "onnxruntime" and s.onnx == "int8_static" for s in specs):
            size = specs[0].image_size
            cache["calibration"] = (calibration_images if calibration_images is not None
                                    else fashion_mnist_batch(CALIBRATION_IMAGES, size, split="train"))  # fmt: skip
        runners = [_build(spec, models, Path(workdir or tmp), cache) for spec in specs]
        models.clear()
        kinds = {(_gemm_kind(r.spec), r.spec.device) for r in runners}
        gemms = {k: _gemm_timer(*k) for k in sorted(kinds)}
        # Memory of the first step (activations, workspaces, folded-weight caches, allocator growth);
        # compiled models were already called once when they were built.
        memory = [_step_memory(r) for r in runners]
        for runner in runners:
            for _ in range(warmup - 1):
                runner.step()
            runner.sync()
        times: list[list[float]] = [[] for _ in runners]
        gemm_times: dict[tuple[str, str], list[float]] = {k: [] for k in gemms}
        for k, (timer, _, _) in gemms.items():
            timer()  # warm-up
        for _ in range(runs):
            for i, runner in enumerate(runners):
                start = time.perf_counter()
                runner.step()
                runner.sync()
                times[i].append(time.perf_counter() - start)
            for k, (timer, _, _) in gemms.items():
                gemm_times[k] += [timer() for _ in range(3)]
        agreement = _agreement(runners, agreement_images) if agreement_images is not None else {}
    return [
        _result(r, times[i], memory[i], gemms, gemm_times, agreement.get(i)) for i, r in enumerate(runners)
    ]


def run_benchmark(spec: BenchmarkSpec, threads: int | None = None, warmup: int = 2, runs: int = 5) -> BenchmarkResult:
    """Time one configuration (see ``compare``)."""
    return compare([spec], threads, warmup, runs)[0]


def _step_memory(runner: _Runner) -> tuple[float, float, str]:
    probe = _MemoryProbe(runner.device)
    probe.start()
    runner.step()
    runner.sync()
    return (*probe.stop(), probe.label)


def _agreement(runners: list[_Runner], images: torch.Tensor) -> dict[int, dict[str, Any]]:
    """Top-1 agreement of each inference runner with the first one, on ``images`` (N, 3, S, S)."""
    preds: dict[int, torch.Tensor] = {}
    for i, runner in enumerate(runners):
        if runner.predict is None:
            continue
        chunks = images.split(runner.spec.batch_size)
        preds[i] = torch.cat([runner.predict(c).argmax(1) for c in chunks])
    if not preds:
        return {}
    base = min(preds)
    vs = runners[base].spec.label
    return {i: {"top1_agreement": float((p == preds[base]).float().mean()), "vs": vs, "images": len(p)} for i, p in preds.items()}


def _result(
    runner: _Runner,
    times: list[float],
    memory: tuple[float, float, str],
    gemms: dict[tuple[str, str], tuple[Callable[[], float], float, str]],
    gemm_times: dict[tuple[str, str], list[float]],
    agreement: dict[str, Any] | None,
) -> BenchmarkResult:
    spec = runner.spec
    params, gflops = count_gflops(spec)
    key = (_gemm_kind(spec), spec.device)
    peak = gemms[key][1] / statistics.median(gemm_times[key]) / 1e9
    extra = dict(runner.extra)
    extra["gemm_peak_best_gflops"] = gemms[key][1] / min(gemm_times[key]) / 1e9
    if agreement:
        extra.update(agreement)
    return BenchmarkResult(
        spec=spec, threads=torch.get_num_threads(), times_s=times, params=params, gflops_per_image=gflops,
        gemm_peak_gflops=peak, gemm_peak_label=gemms[key][2], peak_memory_mb=memory[0],
        memory_increase_mb=memory[1], memory_label=memory[2], setup_s=runner.setup_s,
        setup_label=runner.setup_label, extra=extra,
    )  # fmt: skip


def parse_preset(base: BenchmarkSpec, names: Sequence[str]) -> list[BenchmarkSpec]:
    """Configurations named in ``COMPARE_PRESETS``, each ``base`` with its overrides."""
    specs = []
    for name in names:
        if name not in COMPARE_PRESETS:
            import difflib

            close = difflib.get_close_matches(name, list(COMPARE_PRESETS), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ConfigError(f"unknown --compare entry '{name}'.{hint} Valid: {', '.join(COMPARE_PRESETS)}")
        plain = dict(backend="eager", amp="O0", network="model", onnx="tuned", channels_last=False)
        if name in OPTIMIZED_PRESETS and base.mode == "infer":
            plain["network"] = "optimized"
        specs.append(dataclasses.replace(base, **{**plain, **COMPARE_PRESETS[name]}))
    return specs


def fashion_mnist_batch(
    n: int, image_size: int, source_dir: str | Path | None = None, split: str = "val"
) -> torch.Tensor:
    """``n`` real images (N, 3, S, S) for agreement checks: Fashion-MNIST test images (``split='val'``;
    'train': training images, for calibration), the same number per class, upsampled (bicubic) to
    ``image_size`` by ``data.prepare_fashion_mnist`` and put through the default eval preprocessing
    (resize, centre crop, ImageNet mean/std)."""
    from .data import Preprocess, load_rgb, prepare_fashion_mnist, preprocess_image
    from .data.fashion_mnist import DEFAULT_SOURCE_DIR

    per_class = -(-n // 10)
    pre = Preprocess(input_size=image_size)
    with tempfile.TemporaryDirectory(prefix="conformer-fmnist-") as tmp:
        info = prepare_fashion_mnist(Path(tmp) / "fm", image_size=image_size, source_dir=source_dir or DEFAULT_SOURCE_DIR,
                                     limit_per_class=per_class, num_workers=1)  # fmt: skip
        files = sorted(Path(info[f"{split}_dir"]).glob("*/*.png"))
        by_class = [files[i::per_class] for i in range(per_class)]  # round-robin over the sorted classes
        chosen = [f for group in by_class for f in group][:n]
        return torch.stack([preprocess_image(load_rgb(f), pre) for f in chosen])


# ---------------------------------------------------------------------------------------------
# Reports


def format_result(r: BenchmarkResult) -> str:
    """A human-readable block of every figure of one result."""
    s = r.spec
    what = "forward + backward" if s.mode == "train" else "forward"
    lines = [
        f"{s.arch} | {s.mode} | {s.label} | batch {s.batch_size} | {s.image_size}x{s.image_size} | "
        f"{r.threads} threads | {s.device}",
        f"images/s        {r.images_per_s:.2f}  (median of {len(r.times_s)} runs; best {r.best_images_per_s:.2f})",
        f"latency/batch   {r.latency_ms:.1f} ms (median)",
        f"peak memory     {r.peak_memory_mb:.0f} MB {r.memory_label}; +{r.memory_increase_mb:.0f} MB in the first step",
        f"parameters      {r.params:,}",
        f"GFLOPs/image    {r.gflops_per_image:.2f} ({FLOP_COUNTER}, {what})",
        f"achieved        {r.achieved_gflops:.1f} GFLOP/s = {100 * r.peak_fraction:.0f}% of the GEMM peak "
        f"{r.gemm_peak_gflops:.0f} GFLOP/s ({r.gemm_peak_label}, same run)",
    ]
    if r.setup_label:
        lines.append(f"setup           {r.setup_label}: {r.setup_s:.1f} s")
    if "top1_agreement" in r.extra:
        e = r.extra
        lines.append(f"top-1 agreement {100 * e['top1_agreement']:.1f}% with {e['vs']} on {e['images']} images")
    return "\n".join(lines)


def format_comparison(results: Sequence[BenchmarkResult]) -> str:
    """A Markdown table of side-by-side results, with speed ratios to the first row (median and
    best run). Memory is left out: in one process the allocator's reuse blurs it per configuration."""
    base = results[0]
    rows = [
        "| configuration | mode | images/s | x first | best-run x first | latency ms | GEMM-peak fraction | setup s | top-1 agree |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        agree = f"{100 * r.extra['top1_agreement']:.1f}%" if "top1_agreement" in r.extra else "-"
        rows.append(
            f"| {r.spec.label} | {r.spec.mode} | {r.images_per_s:.2f} | {r.images_per_s / base.images_per_s:.2f} | "
            f"{r.best_images_per_s / base.best_images_per_s:.2f} | {r.latency_ms:.0f} | "
            f"{100 * r.peak_fraction:.0f}% of {r.gemm_peak_gflops:.0f} | {r.setup_s:.1f} | {agree} |"
        )
    return "\n".join(rows)
