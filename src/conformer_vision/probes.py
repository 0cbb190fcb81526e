"""Machine probes of ``conformer benchmark``: the CPU it runs on, the GEMM peak and peak memory.

Used by ``benchmark`` (and ``scripts/benchmark_docs.py``) only; the library's other modules do not import it.

* ``cpu_info``: the CPU model, which of the flags that decide low-precision speed it has (AVX2,
  AVX512F, AVX512_BF16, AMX) and the threads torch uses; from ``/proc/cpuinfo`` where there is one.
* ``gemm_timer`` / ``gemm_peak``: a square matrix product on this machine, now: ``torch.mm`` in
  fp32 / bf16 / fp16 (2048^3 on a CPU, 8192^3 on a GPU), or an onnxruntime ``MatMul`` (fp32) /
  ``MatMulInteger`` (uint8 x int8 -> int32) graph built with ``onnx.helper``; a multiply-add = 2 FLOPs.
* ``MemoryProbe``: peak memory of what runs between ``start`` and ``stop``. On the CPU the process's
  resident-set high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` at ``start``; the
  lifetime ``ru_maxrss`` where that file cannot be written) and its increase over the resident size
  at ``start``; on CUDA ``torch.cuda.max_memory_allocated``.
"""

from __future__ import annotations

import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

__all__ = ["cpu_info", "describe_cpu", "gemm_timer", "gemm_peak", "MemoryProbe", "CPU_FLAGS"]

CPU_FLAGS = {"AVX2": "avx2", "AVX512F": "avx512f", "AVX512_BF16": "avx512_bf16", "AMX": "amx_tile"}
"""Flags that decide what low precision can gain: name shown -> ``/proc/cpuinfo`` flag. Without
AVX512_BF16 or AMX, oneDNN emulates bf16 matrix products through fp32 instructions (slower than fp32)."""


def cpu_info() -> dict[str, object]:
    """{'model': CPU model name and family, 'flags': {name: bool for CPU_FLAGS} (empty without
    /proc/cpuinfo), 'threads': torch's intra-op threads, 'cores': logical CPUs}."""
    fields: dict[str, str] = {}
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.split("\n\n")[0].splitlines():  # the first processor: every core has the same flags
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    model = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:  # a virtual CPU's name can be as short as "AMD EPYC": the family tells more
        model += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields.get("flags", "").split())
    found = {name: flag in flags for name, flag in CPU_FLAGS.items()} if flags else {}
    return {"model": model, "flags": found, "threads": torch.get_num_threads(), "cores": os.cpu_count()}


def describe_cpu(info: dict[str, object] | None = None) -> str:
    """One line, e.g. 'AMD EPYC (family 25, model 1) | AVX2 yes, AVX512F no, AVX512_BF16 no, AMX no |
    2 threads of 2 CPUs'."""
    info = info or cpu_info()
    flags = info["flags"]
    shown = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items()) if flags else "flags unknown"
    return f"{info['model']} | {shown} | {info['threads']} threads of {info['cores']} CPUs"


def gemm_peak(kind: str, device: str = "cpu", n: int | None = None, reps: int = 5) -> tuple[float, str]:
    """(GFLOP/s, description) of a square matrix product on this machine, now (median of ``reps``).

    ``kind``: 'fp32', 'bf16', 'fp16' (``torch.mm`` on ``device``), 'ort_fp32' (onnxruntime MatMul) or
    'ort_int8' (onnxruntime MatMulInteger; "GFLOP/s" = 2 n^3 integer ops / s).
    """
    timer, flops, label = gemm_timer(kind, device, n)
    timer()
    return flops / statistics.median(timer() for _ in range(reps)) / 1e9, label


def gemm_timer(kind: str, device: str = "cpu", n: int | None = None) -> tuple[Callable[[], float], float, str]:
    """(a function timing one product in seconds, its FLOPs, a description) for ``gemm_peak``'s kinds."""
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
    inputs = [helper.make_tensor_value_info(name, t, [n, n]) for name, t in zip("ab", types)]
    output = helper.make_tensor_value_info("c", types[2], [n, n])
    graph = helper.make_graph([helper.make_node(op, ["a", "b"], ["c"])], "gemm", inputs, [output])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the model's sessions use the same count
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"a": arrays[0], "b": arrays[1]}

    def timer() -> float:
        start = time.perf_counter()
        session.run(None, feed)
        return time.perf_counter() - start

    return timer, 2.0 * n**3, f"onnxruntime {op} {kind} {n}^3, {options.intra_op_num_threads} threads"


def _proc_status_mb(key: str) -> float | None:
    """A ``/proc/self/status`` entry in MB (None where there is no procfs)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class MemoryProbe:
    """Peak memory of what runs between ``start`` and ``stop`` (module docstring); ``label`` says
    which measure was used."""

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
        self.before = _proc_status_mb("VmRSS") or 0.0

    def stop(self) -> tuple[float, float]:
        """(peak MB, increase over the start MB)."""
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            peak = _proc_status_mb("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return peak, max(peak - self.before, 0.0)
