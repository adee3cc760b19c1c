"""The optional runtimes: torch (:func:`need_torch`) and onnxruntime, from whichever of its two packages
is installed.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same module and break each other when
both are present, so modelport's extras are ``cpu`` and ``gpu``, one or the other. onnxruntime-gpu
lists CUDAExecutionProvider even on a machine without a GPU: what really runs is what a session
reports from ``get_providers()`` after it is created.
"""

from __future__ import annotations

from .atomic.interrupt import deferred
from .errors import MissingDependencyError

PACKAGES = ("onnxruntime", "onnxruntime-gpu")


def installed_packages() -> list[str]:
    from importlib import metadata      # 20-30 ms to import: only when asked (a conversion needs none of it)

    found = []
    for name in PACKAGES:
        try:
            metadata.version(name)
            found.append(name)
        except metadata.PackageNotFoundError:
            pass
    return found


def import_onnxruntime():
    """The onnxruntime module, or a clear error saying which extra to install (or to remove one)."""
    found = installed_packages()
    if len(found) > 1:
        raise MissingDependencyError(
            "both onnxruntime and onnxruntime-gpu are installed and break each other; keep one: "
            "pip uninstall -y onnxruntime onnxruntime-gpu, then pip install 'modelport[cpu]' (or 'modelport[gpu]')")
    if not found:
        raise MissingDependencyError(
            "this step needs onnxruntime; install pip install 'modelport[cpu]', or 'modelport[gpu]' on a CUDA machine")
    try:
        import onnxruntime
    except ImportError as exc:
        raise MissingDependencyError(f"{found[0]} is installed but does not import ({exc}); reinstall it") from exc
    return onnxruntime


def session_providers(session) -> list[str]:
    """The execution providers a created session really uses (not what the package lists)."""
    return list(session.get_providers())


def need_torch(step: str):
    """The torch module, or a MissingDependencyError naming the step that needs it and the extra that brings it.
    Conversions between weight formats (pt, safetensors, hf, meta, t7) never need it."""
    try:
        with deferred():     # Ctrl-C inside torch's import can abort the process: held until it is done
            import torch
    except ImportError as exc:
        raise MissingDependencyError(
            f"{step} needs torch, which is not installed; install it with: pip install 'modelport[torch]' "
            "(conversions between weight formats work without it)") from exc
    return torch
