"""Shared by the benchmarks: the machine's description and writing a result file."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def _count_addbmm() -> None:
    """Let `FlopCounterMode` count `addbmm` (the batched experts' input gradient,
    `recolab.models.blocks`), which torch's flop registry leaves out: the products of a `bmm`
    of the same batches (the sum over the batch and the added input are element-wise)."""
    from torch.utils.flop_counter import bmm_flop, flop_registry, register_flop_formula

    if torch.ops.aten.addbmm not in flop_registry:

        @register_flop_formula(torch.ops.aten.addbmm)
        def _addbmm_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
            return bmm_flop(a_shape, b_shape)


_count_addbmm()
OUT = ROOT / "experiments" / "bench"


def bf16_instructions() -> str:
    """The CPU's bfloat16 matrix instructions (`avx512_bf16`, `amx_bf16`) or "none": with them
    `trainer.precision=bf16-mixed` trains faster than float32 here, without them far slower
    (experiments/bench/speed.md)."""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    found = [f for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return ", ".join(found) or "none"


def machine() -> str:
    cpu = "unknown"
    try:
        cpu = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    return (
        f"{platform.platform()}; CPU {cpu} (bf16 instructions: {bf16_instructions()}); "
        f"{os.cpu_count()} cores; torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); numpy {np.__version__}; python {platform.python_version()}"
    )


def command() -> str:
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def write(name: str, title: str, body: str) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"{name}.md"
    stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    path.write_text(
        f"# {title}\n\n- machine: {machine()}\n- command: `{command()}`\n- date: {stamp}\n\n{body}\n"
    )
    print(path.read_text())
    return path


def timed(fn, *, repeat: int = 1) -> float:
    """Best wall time of `repeat` calls, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best
