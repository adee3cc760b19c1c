"""dtype casts applied tensor by tensor on the way from a source to a writer."""

from __future__ import annotations

from .. import dtypes
from ..errors import UnsupportedError
from ..runtime import need_torch
from ..formats.base import Span, TensorInfo, TensorSource, WrappedSource

_FINITE_MAX = {"float16": 65504.0, "bfloat16": 3.3895313892515355e38, "float32": 3.4028234663852886e38}


class CastSource(WrappedSource):
    """Floating-point tensors cast to ``dtype``; integer and bool tensors pass unchanged.

    A finite value that would overflow the target (fp16 tops out at 65504) is an error naming
    the tensor, unless ``allow_overflow`` (then it becomes ±inf, as torch casts it).
    """

    def __init__(self, inner: TensorSource, dtype: str, allow_overflow: bool = False):
        super().__init__(inner)
        need_torch(f"casting to {dtype} (--dtype)")
        if dtype not in dtypes.FLOATING:
            raise UnsupportedError(f"cannot cast to {dtype}; choose one of fp32, fp16, bf16")
        self.dtype = dtype
        self.allow_overflow = allow_overflow
        self._cast: dict[str, str] = {}      # tensor -> dtype it was cast from, as read_bytes casts it

    @property
    def applied(self) -> list[dict]:
        """The casts done so far, one entry per source dtype (for the manifest)."""
        by_dtype: dict[str, list[str]] = {}
        for name, src in self._cast.items():
            by_dtype.setdefault(src, []).append(name)
        return [{"op": "cast", "from": src, "to": self.dtype, "tensors": names} for src, names in by_dtype.items()]

    def _casts(self, name: str) -> bool:
        src = self.inner.info(name).dtype
        return src in dtypes.FLOATING and src != self.dtype

    def info(self, name: str) -> TensorInfo:
        info = self.inner.info(name)
        return TensorInfo(info.name, self.dtype, info.shape) if self._casts(name) else info

    def span(self, name: str) -> Span | None:
        return None if self._casts(name) else self.inner.span(name)

    def storage_view(self, name):
        return None if self._casts(name) else self.inner.storage_view(name)

    def read_bytes(self, name: str):
        if not self._casts(name):
            return self.inner.read_bytes(name)
        import torch

        t = self.inner.read(name)
        out = t.to(dtypes.to_torch(self.dtype))
        self._cast[name] = self.inner.info(name).dtype
        if not self.allow_overflow and out.numel():
            overflow = torch.isinf(out) & torch.isfinite(t)
            if bool(overflow.any()):
                worst = float(t[overflow].abs().max())
                raise UnsupportedError(
                    f"{self.path}: tensor {name!r} has values up to {worst:g}, beyond {self.dtype}'s range "
                    f"(±{_FINITE_MAX[self.dtype]:g}); keep a wider dtype or pass --allow-overflow to store them as ±inf"
                )
        return _tensor_bytes(out)


def _tensor_bytes(t) -> memoryview:
    """A contiguous tensor's bytes (little-endian hosts), without a copy where possible."""
    import torch

    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")
