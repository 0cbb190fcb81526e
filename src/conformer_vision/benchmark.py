"""Speed of a Conformer: images/s, latency, peak memory, GFLOPs and the achieved fraction of GEMM peak.

One configuration (``BenchmarkSpec``: variant, batch, input size, infer/train, backend, autocast
dtype, network) is built (``torch.compile``, the ONNX export and quantisation happen here and are
timed as its setup), warmed up, then timed for ``runs`` steps; images/s is batch / median step time.
``compare`` times several configurations SIDE BY SIDE: built once each, then timed in interleaved
rounds (A B C, A B C, ...), so that a shared, noisy machine slows all of them alike and the ratios
stay meaningful.

Inference times the predictors ``predict`` and ``eval`` run (``runtime``): one step is
``predictor.heads(x)``.

* eager / compile: a ``TorchPredictor`` over the ``network`` (``NETWORKS``): 'optimized' = the copy
  ``optimize_for_inference`` makes (what ``predict`` and ``eval`` run), 'model' = the model as built
  (timm's fused attention), 'reference' = the model with fused attention off (the authors' explicit
  softmax). 'compile' runs ``torch.compile`` of the network's ``forward_heads``.
* onnxruntime: an ``OnnxPredictor`` on the CPU, in its session: onnxruntime's defaults (every graph
  optimisation) with torch's intra-op thread count. No other session setting is used: none measured
  faster (docs/benchmarks.md). The graphs (``ONNX_VARIANTS``): 'tuned' = ``export.export_model``'s,
  of ``optimize_for_inference``'s copy (TorchScript exporter, dynamic batch and size); 'plain' = the
  reference network through the same exporter, without those rewrites; 'int8' / 'int8_static' = the
  tuned graph after int8 dynamic / static (QDQ, calibrated on real images: ``compare``) quantisation
  by ``quantize.quantize_onnx``, what ``conformer export --quantize`` writes.
* train: ``engine.train_step``, the trainer's own update: autocast ``forward_heads``, the two-head
  cross-entropy (mean of the heads), backward, global grad norm, AdamW step; the 'reference'
  network uses PyTorch's default (per-tensor) AdamW, 'model' the trainer's fused AdamW.

GFLOPs are counted by ``models.profile.count_flops`` (``torch.utils.flop_counter``: a multiply-add
= 2 FLOPs; convolutions and matrix products, attention included) on the meta device for the
reference network: forward for 'infer', forward + backward for 'train'. The GEMM peak of the step's
dtype and the first step's peak memory are measured in the same process by ``probes``;
``peak_fraction`` = achieved model GFLOP/s / GEMM peak.
"""

from __future__ import annotations

import copy
import dataclasses
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import ConfigError, did_you_mean
from .probes import MemoryProbe, cpu_info, describe_cpu, gemm_timer
from .runtime import AMP_DTYPES, Predictor

__all__ = [
    "BACKENDS",
    "COMPARE_PRESETS",
    "MODES",
    "NETWORKS",
    "ONNX_VARIANTS",
    "BenchmarkResult",
    "BenchmarkSpec",
    "compare",
    "count_gflops",
    "fashion_mnist_batch",
    "format_comparison",
    "format_result",
    "parse_preset",
    "run_benchmark",
]

MODES = ("infer", "train")
BACKENDS = ("eager", "compile", "onnxruntime")
NETWORKS = ("reference", "model", "optimized")
ONNX_VARIANTS = ("tuned", "plain", "int8", "int8_static")
ONNX_QUANTIZE = {"int8": "int8_dynamic", "int8_static": "int8_static"}  # ONNX variant -> quantize.quantize_onnx mode
CALIBRATION_IMAGES = 64  # Fashion-MNIST *train* images calibrating 'int8_static' (agreement uses test images)
FLOP_COUNTER = "torch.utils.flop_counter"
DTYPE_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}

COMPARE_PRESETS: dict[str, dict[str, Any]] = {
    "reference": {"network": "reference"},  # the authors' attention, eager fp32
    "eager": {},  # the model as built, eager fp32
    "optimized": {"network": "optimized"},  # optimize_for_inference's copy, eager fp32: what predict runs
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
'optimized' and the autocast and compile entries (``OPTIMIZED_PRESETS``) time the predictor as
``predict`` runs it: ``optimize_for_inference``'s copy, channels_last (so 'bf16' and 'bf16_cl'
time the same predictor there); in training they time the model, '_cl' with channels_last."""
OPTIMIZED_PRESETS = ("optimized", "bf16", "fp16", "compile", "compile_bf16", "bf16_cl", "compile_bf16_cl")


@dataclass(frozen=True)
class BenchmarkSpec:
    """One configuration to time.

    Attributes:
        arch: variant name (``models.list_models()`` or an alias).
        batch_size: images per step.
        image_size: side of the square input.
        mode: 'infer' or 'train'.
        backend: 'eager', 'compile' (``torch.compile``) or 'onnxruntime' (infer only, CPU).
        amp: an ``amp_level`` name (``runtime.AMP_DTYPES``): float32, or bf16 / fp16 autocast
            (eager/compile only).
        network: 'reference', 'model' or 'optimized' (module docstring; eager/compile only).
        onnx: for onnxruntime: 'tuned', 'plain', 'int8' (dynamic) or 'int8_static' (module docstring).
        device: 'cpu' or 'cuda' ('cuda:N').
        channels_last: channels_last weights and inputs (eager/compile).
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
        if self.amp not in AMP_DTYPES:
            raise ConfigError(f"amp must be one of {tuple(AMP_DTYPES)}, got {self.amp!r}")
        fp32 = self.amp_dtype is None
        onnx = self.backend == "onnxruntime"
        checks = [
            (self.mode in MODES, f"mode must be one of {MODES}, got {self.mode!r}"),
            (self.backend in BACKENDS, f"backend must be one of {BACKENDS}, got {self.backend!r}"),
            (self.onnx in ONNX_VARIANTS, f"onnx must be one of {ONNX_VARIANTS}, got {self.onnx!r}"),
            (self.batch_size >= 1 and self.image_size >= 16, "batch_size must be >= 1 and image_size >= 16"),
            (not (onnx and self.mode == "train"), "onnxruntime is inference only: use --mode infer"),
            (fp32 or not onnx, "onnxruntime runs the float32 graph: use --amp O0 (the int8 variant is --onnx int8)"),
            (not (onnx and self.device != "cpu"), "the onnxruntime benchmark runs on the CPU"),
            (self.network in NETWORKS, f"network must be one of {NETWORKS}, got {self.network!r}"),
            (
                not (self.network == "reference" and (not fp32 or self.backend != "eager" or self.channels_last)),
                "the reference network is plain eager float32 NCHW: drop --amp/--backend/--channels_last or "
                "--network reference",
            ),
            (
                not (self.network == "optimized" and self.mode == "train"),
                "optimize_for_inference makes an inference copy: use --network model (or reference) with --mode train",
            ),
            (
                not (onnx and self.network != "model"),
                "--network applies to PyTorch backends: the onnxruntime graphs are chosen with --onnx",
            ),
            (not (self.grad_checkpointing and self.mode != "train"), "--grad_checkpointing applies to --mode train"),
            (not (onnx and self.channels_last), "--channels_last applies to PyTorch backends"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def amp_dtype(self) -> torch.dtype | None:
        """The autocast dtype (None = float32)."""
        return AMP_DTYPES[self.amp]

    @property
    def label(self) -> str:
        """Short name, e.g. 'reference', 'eager fp32', 'eager optimized bf16', 'onnxruntime int8'. The
        layout is named where it is not the network's usual one (the optimized predictor's is
        channels_last, as in predict; the model's NCHW)."""
        if self.network == "reference":
            return "reference"
        if self.backend == "onnxruntime":
            return f"onnxruntime {self.onnx}"
        if self.network == "optimized":
            net, layout = " optimized", "" if self.channels_last else " NCHW"
        else:
            net, layout = "", " channels_last" if self.channels_last else ""
        ckpt = " grad-checkpointing" if self.grad_checkpointing else ""
        return f"{self.backend}{net} {DTYPE_NAMES[self.amp_dtype]}{layout}{ckpt}"


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
    cpu: dict[str, Any] = field(default_factory=dict)  # probes.cpu_info() of the machine
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


def count_gflops(spec: BenchmarkSpec) -> tuple[int, float]:
    """(parameters, GFLOPs per image) of ``spec``'s step on the reference network, counted on the
    meta device: forward for 'infer', forward + backward for 'train'."""
    from .models import create_model
    from .models.profile import count_flops, count_params

    model = create_model(spec.arch, num_classes=spec.num_classes, device="meta")
    model.set_fused_attn(False)  # explicit attention: the counter does not see the CPU SDPA kernel
    model.train(spec.mode == "train")
    flops = count_flops(model, (spec.image_size, spec.image_size), spec.batch_size, backward=spec.mode == "train")
    return count_params(model), flops / spec.batch_size / 1e9


def _gemm_kind(spec: BenchmarkSpec) -> str:
    """The ``probes.gemm_timer`` kind that bounds ``spec``'s step."""
    if spec.backend == "onnxruntime":
        return "ort_int8" if spec.onnx in ONNX_QUANTIZE else "ort_fp32"
    return DTYPE_NAMES[spec.amp_dtype]


# ---------------------------------------------------------------------------------------------
# Runners: one built configuration each


@dataclass
class _Runner:
    """A built configuration: ``step()`` runs one timed step; ``predictor`` (inference) is what the
    step runs, also asked for the agreement check; ``setup_s`` is the compile, export or
    quantisation time."""

    spec: BenchmarkSpec
    step: Callable[[], Any]
    device: torch.device
    predictor: Predictor | None = None
    setup_s: float = 0.0
    setup_label: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


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
    """eager / compile: the predictor of the spec's network (inference) or the trainer's step."""
    from .runtime import TorchPredictor

    if spec.network == "reference":
        model.set_fused_attn(False)  # the authors' explicit softmax attention
    if spec.mode == "train":
        return _Runner(spec, _train_step_fn(spec, model.to(x.device), x), x.device)
    optimize = spec.network == "optimized"
    predictor = TorchPredictor(model, x.device, spec.amp_dtype, channels_last=spec.channels_last, optimize=optimize)
    runner = _Runner(spec, lambda: predictor.heads(x), x.device, predictor)
    if spec.backend == "compile":
        predictor.model.forward_heads = torch.compile(predictor.model.forward_heads)
        start = time.perf_counter()
        runner.step()
        runner.sync()
        runner.setup_s, runner.setup_label = time.perf_counter() - start, "torch.compile (first call)"
    return runner


def _train_step_fn(spec: BenchmarkSpec, model: nn.Module, x: torch.Tensor) -> Callable[[], Any]:
    """The trainer's update (``engine.train_step``): AdamW (lr 1e-4, wd 0.05), mean two-head CE.
    The reference network uses PyTorch's default AdamW (a per-tensor loop on the CPU), the model the
    trainer's fused one."""
    from .engine import BothHeads, TrainParts, train_step
    from .losses import TwoHeadLoss
    from .optim import build_optimizer

    if spec.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    model.set_grad_checkpointing(spec.grad_checkpointing)
    net: nn.Module = BothHeads(model)
    if spec.backend == "compile":
        net = torch.compile(net)
    scaler = torch.amp.GradScaler(x.device.type) if spec.amp_dtype == torch.float16 else None
    optimizer = build_optimizer(model, "adamw", lr=1e-4, weight_decay=0.05, fused=spec.network != "reference")
    loss = TwoHeadLoss(nn.CrossEntropyLoss())
    parts = TrainParts(
        model=net,
        criterion=loss,
        optimizer=optimizer,
        scheduler=None,
        device=x.device,
        amp_dtype=spec.amp_dtype,
        scaler=scaler,
    )
    target = torch.randint(0, spec.num_classes, (x.shape[0],), generator=torch.Generator().manual_seed(0)).to(x.device)
    return lambda: train_step(parts, x, target)


def _onnx_file(spec: BenchmarkSpec, model: nn.Module, workdir: Path, cache: dict[str, Any]) -> tuple[Path, float]:
    """The float graph and its export time (shared by the ONNX variants of one comparison), both by
    ``export.py``'s TorchScript exporter (as fast a graph as dynamo's, exported ~10x faster): 'plain'
    exports the reference network as it is, the others go through ``export.export_model``, which
    exports ``optimize_for_inference``'s copy with the file's metadata (no self-check here)."""
    from .export import ExportWrapper, _onnx_torchscript, export_model

    plain = spec.onnx == "plain"
    key = f"{spec.arch}-{spec.num_classes}-{spec.checkpoint}-{plain}"
    if key not in cache:
        start = time.perf_counter()
        path = workdir / f"{spec.arch}{'.plain' if plain else ''}.onnx"
        if plain:
            model.set_fused_attn(False)
            _onnx_torchscript(ExportWrapper(model).eval(), path, None)
        else:
            export_model(model, file_format="ONNX", output=path, check=False, exporter="torchscript")
        cache[key] = (path, time.perf_counter() - start)
    return cache[key]


def _onnx_runner(
    spec: BenchmarkSpec, model: nn.Module, x: torch.Tensor, workdir: Path, cache: dict[str, Any]
) -> _Runner:
    """onnxruntime on the CPU: an ``OnnxPredictor`` over the spec's graph (module docstring)."""
    from .data.transforms import Preprocess
    from .quantize import quantize_onnx
    from .runtime import OnnxPredictor

    path, export_s = _onnx_file(spec, model, workdir, cache)
    extra: dict[str, Any] = {"export_s": export_s}
    start = time.perf_counter()
    if spec.onnx in ONNX_QUANTIZE:
        mode = ONNX_QUANTIZE[spec.onnx]
        calibration = cache.get("calibration") if mode == "int8_static" else None
        path = quantize_onnx(path, path.with_name(f"{path.stem}.{mode}.onnx"), mode, calibration)
        extra["quantize_s"] = time.perf_counter() - start
        if calibration is not None:
            extra["calibration_images"] = len(calibration)
    # The preprocessing is not used (the benchmark feeds tensors); given, so the plain graph is not
    # reported as a foreign file without preprocessing metadata.
    predictor = OnnxPredictor(path, "CPU", preprocess=Preprocess(input_size=spec.image_size))
    extra["session_s"] = time.perf_counter() - start - extra.get("quantize_s", 0.0)
    label = "ONNX export" + (f" + {ONNX_QUANTIZE[spec.onnx]} quantisation" if spec.onnx in ONNX_QUANTIZE else "")
    setup_s = export_s + extra.get("quantize_s", 0.0)
    return _Runner(spec, lambda: predictor.heads(x), torch.device("cpu"), predictor, setup_s, label, extra)


def _build(spec: BenchmarkSpec, models: dict[str, nn.Module], workdir: Path, cache: dict[str, Any]) -> _Runner:
    key = f"{spec.arch}-{spec.num_classes}-{spec.checkpoint}"
    if key not in models:
        models[key] = _base_model(spec)
    model = copy.deepcopy(models[key])
    from .runtime import resolve_device

    dev = resolve_device(spec.device)
    x = torch.randn(spec.batch_size, 3, spec.image_size, spec.image_size, generator=torch.Generator().manual_seed(1))
    if spec.backend == "onnxruntime":
        return _onnx_runner(spec, model, x, workdir, cache)
    return _torch_runner(spec, model, x.to(dev))


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
    and peak see the same machine load). With ``agreement_images`` (N, 3, S, S), the top-1 agreement
    of every inference configuration with the first one is measured on them (``extra['top1_agreement']``).
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
            if calibration_images is None:
                calibration_images = fashion_mnist_batch(CALIBRATION_IMAGES, specs[0].image_size, split="train")
            cache["calibration"] = calibration_images
        runners = [_build(spec, models, Path(workdir or tmp), cache) for spec in specs]
        models.clear()
        gemms = {k: gemm_timer(*k) for k in sorted({(_gemm_kind(r.spec), r.spec.device) for r in runners})}
        # Memory of the first step (activations, workspaces, allocator growth); compiled models
        # were already called once when they were built.
        memory = [_step_memory(r) for r in runners]
        for runner in runners:
            for _ in range(warmup - 1):
                runner.step()
            runner.sync()
        times: list[list[float]] = [[] for _ in runners]
        gemm_times: dict[tuple[str, str], list[float]] = {k: [] for k in gemms}
        for timer, _, _ in gemms.values():
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
    cpu = cpu_info()
    return [_result(r, times[i], memory[i], gemms, gemm_times, agreement.get(i), cpu) for i, r in enumerate(runners)]


def run_benchmark(spec: BenchmarkSpec, threads: int | None = None, warmup: int = 2, runs: int = 5) -> BenchmarkResult:
    """Time one configuration (see ``compare``)."""
    return compare([spec], threads, warmup, runs)[0]


def _step_memory(runner: _Runner) -> tuple[float, float, str]:
    probe = MemoryProbe(runner.device)
    probe.start()
    runner.step()
    runner.sync()
    return (*probe.stop(), probe.label)


def _agreement(runners: list[_Runner], images: torch.Tensor) -> dict[int, dict[str, Any]]:
    """Top-1 agreement of each inference runner with the first one, on ``images`` (N, 3, S, S)."""
    preds: dict[int, torch.Tensor] = {}
    for i, runner in enumerate(runners):
        if runner.predictor is not None:
            chunks = images.split(runner.spec.batch_size)
            preds[i] = torch.cat([runner.predictor.fused(c).argmax(1) for c in chunks])
    if not preds:
        return {}
    base = min(preds)
    vs = runners[base].spec.label
    return {
        i: {"top1_agreement": float((p == preds[base]).float().mean()), "vs": vs, "images": len(p)}
        for i, p in preds.items()
    }


def _result(
    runner: _Runner,
    times: list[float],
    memory: tuple[float, float, str],
    gemms: dict[tuple[str, str], tuple[Callable[[], float], float, str]],
    gemm_times: dict[tuple[str, str], list[float]],
    agreement: dict[str, Any] | None,
    cpu: dict[str, Any],
) -> BenchmarkResult:
    spec = runner.spec
    params, gflops = count_gflops(spec)
    key = (_gemm_kind(spec), spec.device)
    extra = {**runner.extra, "gemm_peak_best_gflops": gemms[key][1] / min(gemm_times[key]) / 1e9, **(agreement or {})}
    peak = gemms[key][1] / statistics.median(gemm_times[key]) / 1e9
    return BenchmarkResult(
        spec,
        torch.get_num_threads(),
        times,
        params,
        gflops,
        peak,
        gemms[key][2],
        *memory,
        setup_s=runner.setup_s,
        setup_label=runner.setup_label,
        cpu=cpu,
        extra=extra,
    )


def parse_preset(base: BenchmarkSpec, names: Sequence[str]) -> list[BenchmarkSpec]:
    """Configurations named in ``COMPARE_PRESETS``, each ``base`` with its overrides."""
    specs = []
    for name in names:
        if name not in COMPARE_PRESETS:
            hint = did_you_mean(name, COMPARE_PRESETS)
            raise ConfigError(f"unknown --compare entry '{name}' (valid: {', '.join(COMPARE_PRESETS)}){hint}")
        plain = dict(backend="eager", amp="O0", network="model", onnx="tuned", channels_last=False)
        if name in OPTIMIZED_PRESETS and base.mode == "infer":
            plain.update(network="optimized", channels_last=True)  # the predictor as predict runs it
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
        source = source_dir or DEFAULT_SOURCE_DIR
        info = prepare_fashion_mnist(
            Path(tmp) / "fm", image_size=image_size, source_dir=source, limit_per_class=per_class, num_workers=1
        )
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
    if r.cpu:
        lines.append(f"cpu             {describe_cpu(r.cpu)}")
    return "\n".join(lines)


def format_comparison(results: Sequence[BenchmarkResult]) -> str:
    """A Markdown table of side-by-side results, with speed ratios to the first row (median and
    best run). Memory is left out: in one process the allocator's reuse blurs it per configuration."""
    base = results[0]
    rows = [
        "| configuration | mode | images/s | x first | best-run x first | latency ms | GEMM-peak fraction | setup s "
        "| top-1 agree |",
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
