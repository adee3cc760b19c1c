"""What an export is asked and what it reports: the options, the result, the opsets modelport writes.
Both exporters (torch.onnx and TorchScript in :mod:`.export`, the ONNX builder in :mod:`.onnx_builder`)
share them, so neither imports the other for them."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UnsupportedError

MIN_OPSET, MAX_OPSET, DEFAULT_OPSET = 14, 24, 17
LEGACY_MAX_OPSET = 20          # dynamo=False up to here; dynamo=True above


@dataclass(frozen=True)
class ExportOptions:
    """How to export (a role of its own beside reading, writing and converting options)."""

    opset: int = DEFAULT_OPSET        # onnx
    dtype: str | None = None          # fp32 | fp16 (None: the source's)
    static_shapes: bool = False       # onnx: no dynamic batch / sequence axes
    external_data: bool = False       # onnx: tensors in <name>.onnx.data even under 2 GB
    method: str | None = None         # torchscript: script | trace (default: script for reference models)
    device: str = "cpu"
    exporter: str = "auto"            # onnx: builder (known families, see onnx_builder) | torch | auto
    kv_cache: bool = True             # onnx builder: past_key_values in, present out (else logits only)


@dataclass
class ExportResult:
    dst: Path
    format: str                       # onnx | torchscript
    exporter: str                     # what wrote it, in words
    origin: str                       # the runnable exported
    bytes: int
    opset: int | None = None
    external_data: Path | None = None
    max_abs_diff: float | None = None  # against eager, at the check shapes
    notes: list[str] = field(default_factory=list)


def modelport_version() -> str:
    from .._version import __version__

    return __version__


def source_sha256(path: Path) -> str:
    """sha256 of a file, or of a directory's regular files (name and content, in name order)."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with open(p, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()


def check_opset(opset: int) -> int:
    if not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise UnsupportedError(f"opset {opset}: modelport exports ONNX opsets {MIN_OPSET}-{MAX_OPSET} "
                               f"(default {DEFAULT_OPSET})")
    return opset
