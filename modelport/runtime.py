"""onnxruntime, from whichever of its two packages is installed.

``onnxruntime`` (CPU) and ``onnxruntime-gpu`` install the same module and break each other when
both are present, so modelport's extras are ``cpu`` and ``gpu``, one or the other. onnxruntime-gpu
lists CUDAExecutionProvider even on a machine without a GPU: what really runs is what a session
reports from ``get_providers()`` after it is created.
"""

from __future__ import annotations

from importlib import metadata

from .errors import MissingDependencyError

PACKAGES = ("onnxruntime", "onnxruntime-gpu")


def installed_packages() -> list[str]:
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
