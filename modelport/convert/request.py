"""One conversion as ``modelport convert`` states it: every option of the command, typed, in one object.

The command builds a :class:`ConvertRequest` from its parsed options; ``modelport batch`` builds one
from each job's ``options`` mapping (see :mod:`modelport.batch.jobs`), checked against
:data:`OPTIONS`, the table of the command's options and the kind of value each takes. Both then
call :meth:`ConvertRequest.run`, which calls the library :func:`modelport.convert.convert` with the
typed option objects (:class:`~modelport.formats.base.Options`, :class:`~.export_options.ExportOptions`,
:class:`~modelport.models.spec.LoadSpec`), so a job means exactly what the command means and neither
re-implements a branch of the conversion.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UnsupportedError

# long option name -> (field, kind, argument): kind is flag | str | int | choice | format | file | size.
# tests/convert/test_request.py holds this table to the command's own options.
OPTIONS: dict[str, tuple[str, str, Any]] = {
    "to": ("to", "format", None),
    "from": ("from_", "format", None),
    "dtype": ("dtype", "choice", ("fp32", "fp16", "bf16")),
    "allow-overflow": ("allow_overflow", "flag", None),
    "shard-size": ("shard_size", "size", None),
    "force": ("force", "flag", None),
    "config": ("config", "file", None),
    "assume-config": ("assume_config", "flag", None),
    "strip-prefix": ("strip_prefix", "str", None),
    "arch": ("arch", "str", None),
    "layout": ("layout", "str", None),
    "shards": ("shards", "int", 1),                    # at least 1
    "no-crc32": ("no_crc32", "flag", None),
    "params-only": ("params_only", "flag", None),
    "t7-mode": ("t7_mode", "choice", ("binary", "ascii")),
    "t7-long-size": ("t7_long_size", "choice", ("4", "8")),
    "t7-endian": ("t7_endian", "choice", ("little", "big")),
    "method": ("method", "choice", ("script", "trace")),
    "opset": ("opset", "int", None),
    "exporter": ("exporter", "choice", ("auto", "builder", "torch")),
    "kv-cache": ("kv_cache", "flag", None),            # --kv-cache/--no-kv-cache
    "static-shapes": ("static_shapes", "flag", None),
    "external-data": ("external_data", "flag", None),
    "input-shape": ("input_shape", "str", None),
    "input-dtype": ("input_dtype", "str", None),
    "device": ("device", "str", None),
    "engine": ("engine", "choice", ("auto", "reference", "transformers")),
    "allow-expanded": ("allow_expanded", "flag", None),
    "no-manifest": ("no_manifest", "flag", None),
    "verify": ("verify", "flag", None),
    "view": ("view", "flag", None),
    "trust-torchscript": ("trust_torchscript", "flag", None),
}

# Options that only one kind of target uses: given for another, they are refused, never silently ignored.
TARGET_OPTIONS = {"opset": ("onnx",), "static_shapes": ("onnx",), "external_data": ("onnx",),
                  "method": ("torchscript",), "input_shape": ("onnx", "torchscript"),
                  "input_dtype": ("onnx", "torchscript")}


class UnusedOption(UnsupportedError):
    """An option the target does not use (the command reports it as a usage error)."""


@dataclass(frozen=True)
class ConvertRequest:
    """``modelport convert SRC DST [options]``, typed; defaults are the command's."""

    src: Path
    dst: Path
    to: str | None = None
    from_: str | None = None
    dtype: str | None = None
    allow_overflow: bool = False
    shard_size: int | None = None          # bytes
    force: bool = False
    config: Path | None = None
    assume_config: bool = False
    strip_prefix: str | None = None
    arch: str | None = None
    layout: str | None = None
    shards: int | None = None
    no_crc32: bool = False
    params_only: bool = False
    t7_mode: str | None = None
    t7_long_size: str | None = None
    t7_endian: str | None = None
    method: str | None = None
    opset: int | None = None
    exporter: str = "auto"
    kv_cache: bool = True
    static_shapes: bool = False
    external_data: bool = False
    input_shape: str | None = None
    input_dtype: str | None = None
    device: str = "cpu"
    engine: str = "auto"
    allow_expanded: bool = False
    no_manifest: bool = False
    verify: bool | dict = False            # or parity options (a batch job's verify mapping)
    view: bool = False
    trust_torchscript: bool = False

    def replace(self, **changes) -> "ConvertRequest":
        return dataclasses.replace(self, **changes)

    def target(self):
        """The target format; options it does not use refused (:class:`UnusedOption`)."""
        from . import target_format

        target = target_format(Path(self.dst), self.to)
        for name, formats in TARGET_OPTIONS.items():
            if getattr(self, name) and target.id not in formats:
                flag = "--" + name.replace("_", "-")
                raise UnusedOption(f"{flag} applies to {' and '.join(formats)} targets, and this one is "
                                   f"{target.id}: drop {flag}")
        return target

    def options(self):
        """The reading and writing options (:class:`~modelport.formats.base.Options`) this request sets."""
        from ..formats.base import Options

        given = dict(config=self.config, assume_config=self.assume_config or None, strip_prefix=self.strip_prefix,
                     arch=self.arch, layout=self.layout, shards=self.shards, params_only=self.params_only or None,
                     crc32=False if self.no_crc32 else None, t7_mode=self.t7_mode,
                     t7_long_size=int(self.t7_long_size) if self.t7_long_size else None, t7_endian=self.t7_endian,
                     allow_expanded=self.allow_expanded or None)
        return Options(**{k: v for k, v in given.items() if v is not None})

    def export_options(self):
        """How a graph target is exported (:class:`~.export_options.ExportOptions`)."""
        from .export_options import DEFAULT_OPSET, ExportOptions

        return ExportOptions(opset=self.opset or DEFAULT_OPSET, dtype=self.dtype, static_shapes=self.static_shapes,
                             external_data=self.external_data, method=self.method, device=self.device,
                             exporter=self.exporter, kv_cache=self.kv_cache)

    def load_spec(self):
        """How the source is loaded to run (:class:`~modelport.models.spec.LoadSpec`)."""
        from ..models.spec import LoadSpec

        return LoadSpec(arch=self.arch, config=self.config, assume_config=self.assume_config,
                        input_shape=self.input_shape, input_dtype=self.input_dtype, engine=self.engine,
                        format=self.from_, trust_torchscript=True if self.trust_torchscript else None)

    def run(self, progress: bool | None = None):
        """The conversion, through the library's :func:`~modelport.convert.convert`; its :class:`Result`."""
        from . import convert

        target = self.target()
        with self._trusted():
            return convert(self.src, self.dst, to=self.to, from_=self.from_, dtype=self.dtype,
                           allow_overflow=self.allow_overflow, shard_size=self.shard_size, force=self.force,
                           options=self.options(), progress=progress, manifest=not self.no_manifest,
                           verify=self.verify, export=self.export_options() if target.graph else None,
                           load=self.load_spec())

    def _trusted(self):
        if not self.trust_torchscript:
            return contextlib.nullcontext()
        from ..formats.torchscript import trusted_torchscript

        return trusted_torchscript()


__all__ = ["ConvertRequest", "OPTIONS", "TARGET_OPTIONS", "UnusedOption"]
