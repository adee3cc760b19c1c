"""Shared builders: small tensors and state dicts made deterministically from a seed."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def tensor_zoo(seed: int = 0) -> dict:
    """One tensor of every kind a round trip must keep bit for bit (views are made contiguous
    by the caller where a format needs it; non-contiguous ones are kept as views here)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    base = torch.randn(6, 10, generator=g)
    return {
        "f32": torch.randn(3, 5, generator=g),
        "f16": torch.randn(4, 7, generator=g).half(),
        "bf16": torch.randn(2, 9, generator=g).bfloat16(),
        "f64": torch.randn(5, generator=g).double(),
        "i64": torch.randint(-2**62, 2**62, (4,), generator=g),
        "i32": torch.randint(-2**31, 2**31 - 1, (3, 2), generator=g, dtype=torch.int32),
        "i8": torch.randint(-128, 127, (11,), generator=g, dtype=torch.int8),
        "u8": torch.randint(0, 255, (2, 2, 3), generator=g, dtype=torch.uint8),
        "bool": torch.rand(8, generator=g) > 0.5,
        "scalar": torch.tensor(3.25),
        "empty": torch.empty(0, 4),
        "special": torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0, 1e-45]),
        "transposed": base.t(),            # non-contiguous
        "sliced": base[1:5, ::3],          # offset + strides
    }


def tied_state_dict(seed: int = 0) -> dict:
    """A GPT-2-like state dict whose lm_head shares its tensor with the embedding."""
    import torch

    g = torch.Generator().manual_seed(seed)
    wte = torch.randn(37, 24, generator=g)
    return {
        "transformer.wte.weight": wte,
        "transformer.wpe.weight": torch.randn(16, 24, generator=g),
        "transformer.h.0.attn.c_attn.weight": torch.randn(24, 72, generator=g),
        "transformer.h.0.attn.c_attn.bias": torch.randn(72, generator=g),
        "transformer.ln_f.weight": torch.ones(24),
        "lm_head.weight": wte,
    }


ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """Run the real command line in a subprocess, as a user would (from any directory)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, "-m", "modelport", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          env=env)


def run_cli_in_process(*args: str, cwd=None) -> subprocess.CompletedProcess:
    """The command line's ``main`` run in this process (click's isolation captures its streams):
    the same exit codes and messages as :func:`run_cli`, without starting a Python and torch."""
    from click.testing import CliRunner

    from modelport.cli import main

    old = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with CliRunner().isolation() as (out, err, _):
            try:
                main([str(a) for a in args])
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(old)
    return subprocess.CompletedProcess(list(args), code, out.getvalue().decode(), err.getvalue().decode())


@pytest.fixture
def cli():
    return run_cli_in_process


def bitwise_equal(a, b) -> bool:
    """Same dtype, shape and bytes (so -0.0 != 0.0 and NaN payloads count)."""
    import torch

    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.numel() == 0:
        return True
    return torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))
