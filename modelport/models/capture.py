"""Per-layer outputs of a runnable model, read by the reference's module names (``model.layers.3``).

What :meth:`~.runners.Runnable.capture` does per backend:

- torch eager: forward hooks on the named modules;
- onnxruntime: the values leaving each module scope (``/model/layers.3/``) of an exported graph are
  added as outputs to a copy of the graph, run in a session with the same providers;
- TorchScript: each scripted module is called with the inputs the reference module received, so a
  module is judged on its own (a fault does not spread into later layers).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

def named_root(module):
    """The module whose names are the model's own: a wrapper that adapts a model's calling convention
    (a transformers model behind ``forward(input_ids, attention_mask)``) names it as ``root``."""
    return getattr(module, "root", module)


def _first_tensor(out):
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (list, tuple)):
        for o in out:
            t = _first_tensor(o)
            if t is not None:
                return t
    if hasattr(out, "to_tuple"):
        return _first_tensor(out.to_tuple())
    return None


def capture_hooks(runnable, names: list[str], feeds: dict, keep_inputs: bool = False):
    """Outputs (and, if asked, positional inputs) of the named modules in one run; names in call order."""
    outputs: dict[str, Any] = {}
    inputs: dict[str, tuple] = {}
    order: list[str] = []
    handles = []
    modules = dict(named_root(runnable.module).named_modules())
    for name in names:
        if name not in modules:
            continue

        def hook(mod, args, out, name=name):
            t = _first_tensor(out)
            if t is not None and name not in outputs:
                outputs[name] = t.detach()
                order.append(name)
                if keep_inputs:
                    inputs[name] = tuple(a.detach() if hasattr(a, "detach") else a for a in args)

        handles.append(modules[name].register_forward_hook(hook))
    try:
        runnable.run(feeds)
    finally:
        for h in handles:
            h.remove()
    return outputs, inputs, order


def replay_script(runnable, inputs: dict[str, tuple], names: list[str]):
    """Each named submodule of a TorchScript model called with the reference's inputs to it."""
    import torch

    outputs = {}
    prefix = script_prefix(runnable)
    for name in names:
        if name not in inputs:
            continue
        try:
            sub = _submodule(runnable.module, prefix + name)
            with torch.no_grad():
                out = sub(*[a.to(runnable.device) if hasattr(a, "to") else a for a in inputs[name]])
        except (AttributeError, RuntimeError, TypeError):
            continue
        t = _first_tensor(out)
        if t is not None:
            outputs[name] = t.detach()
    return outputs


def script_prefix(runnable) -> str:
    """The wrapper prefix a TorchScript file's metadata records (``model.`` for a wrapped transformers model)."""
    if runnable.path is None:
        return ""
    from ..errors import ModelportError
    from ..formats.torchscript import read_metadata

    try:
        return read_metadata(runnable.path).get("strip_prefix") or ""
    except ModelportError:          # no readable metadata: the names as they are
        return ""


def _submodule(module, name: str):
    """``module.get_submodule(name)`` by attribute walk (ScriptModules refuse get_submodule)."""
    for part in name.split("."):
        module = getattr(module, part)
    return module


def onnx_scope(name: str) -> str:
    """``model.layers.3.self_attn`` -> ``/model/layers.3/self_attn/`` (torch.onnx's node-name scopes)."""
    parts: list[str] = []
    for p in name.split("."):
        if p.isdigit() and parts:
            parts[-1] += f".{p}"
        else:
            parts.append(p)
    return "/" + "/".join(parts) + "/"


def _node_scopes(node) -> set[str] | None:
    """The module names a node of the dynamo exporter lies in (``pkg.torch.onnx.name_scopes``), or None."""
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                return {str(x) for x in ast.literal_eval(prop.value)}
            except (ValueError, SyntaxError):
                return None
    return None


def _membership(graph):
    """``inside(i, name)``: whether node ``i`` of ``graph`` lies in module ``name``'s scope. A node's scopes
    are read from the dynamo exporter's ``name_scopes`` metadata, else from the TorchScript-based exporter's
    node name (``/model/layers.3/…``)."""
    nodes = list(graph.node)
    scopes = [_node_scopes(n) for n in nodes]

    def inside(i: int, name: str) -> bool:
        return name in scopes[i] if scopes[i] is not None else nodes[i].name.startswith(onnx_scope(name))

    return inside


def onnx_scope_values(graph, names: list[str], inside=None) -> dict[str, str]:
    """Module name -> the last value computed inside its scope and used outside it."""
    nodes = list(graph.node)
    inside = inside or _membership(graph)
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for v in node.input:
            consumers.setdefault(v, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    found = {}
    for name in names:
        last = None
        for i, node in enumerate(nodes):
            if not inside(i, name):
                continue
            for v in node.output:
                if v in graph_outputs or any(not inside(u, name) for u in consumers.get(v, [])):
                    last = v
        if last is not None:
            found[name] = last
    return found


def scope_values_and_membership(model, names: list[str]):
    """Scope values by the reference's names, and ``inside(i, name)`` by the same names. An export of a
    wrapped model (a transformers model behind modelport's calling convention) scopes every module under
    the wrapper's attribute, which the file's ``modelport.strip_prefix`` metadata records (``model.``):
    those names are looked up with it first."""
    meta = {p.key: p.value for p in model.metadata_props}
    prefix = meta.get("modelport.strip_prefix") or ""
    member = _membership(model.graph)
    if prefix:
        found = onnx_scope_values(model.graph, [prefix + n for n in names], member)
        if found:
            return ({n: found[prefix + n] for n in names if prefix + n in found},
                    lambda i, name: member(i, prefix + name))
    return onnx_scope_values(model.graph, names, member), member


def _prefixed_scope_values(model, names: list[str]) -> dict[str, str]:
    """Scope values by the reference's names (see :func:`scope_values_and_membership`)."""
    return scope_values_and_membership(model, names)[0]


def capture_onnx(runnable, names: list[str], feeds: dict):
    """Intermediate values of an onnxruntime model, added as outputs to a copy of its graph."""
    import onnx
    import torch

    from ..runtime import import_onnxruntime

    from ..formats.onnx import load_for_session

    if runnable.path is None:
        return {}
    model = load_for_session(Path(runnable.path))       # the weights stay in the file, read by onnxruntime
    values = _prefixed_scope_values(model, names)
    if not values:
        return {}
    present = {o.name for o in model.graph.output}
    for v in values.values():
        if v not in present:
            model.graph.output.append(onnx.ValueInfoProto(name=v))
            present.add(v)
    ort = import_onnxruntime()
    providers = runnable.module.get_providers() if hasattr(runnable.module, "get_providers") else ["CPUExecutionProvider"]
    session = _session_beside(ort, model, Path(runnable.path), providers)
    arrays = runnable.arrays(feeds)
    wanted = list(dict.fromkeys(values.values()))
    got = dict(zip(wanted, session.run(wanted, arrays)))
    return {name: torch.from_numpy(got[v]) for name, v in values.items()}


def _session_beside(ort, model, original: Path, providers):
    """A session for the edited graph. Weights stored as external data (the model's own inline weights too,
    read in place: ``formats.onnx.load_for_session``) are found relative to the original's directory:
    onnxruntime 1.21 and later is told that directory, an older one reads the graph from a file written for
    a moment beside the original (hidden name, removed at once)."""
    from onnx.external_data_helper import uses_external_data

    if not any(uses_external_data(t) for t in model.graph.initializer):
        return ort.InferenceSession(model.SerializeToString(), providers=providers)
    if _version(ort.__version__) >= (1, 21):
        options = ort.SessionOptions()
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(original.parent))
        return ort.InferenceSession(model.SerializeToString(), options, providers=providers)
    tmp = original.parent / f".{original.name}.modelport-{os.getpid()}.layers.onnx"
    try:
        tmp.write_bytes(model.SerializeToString())
        return ort.InferenceSession(str(tmp), providers=providers)
    finally:
        tmp.unlink(missing_ok=True)


def _version(text: str) -> tuple[int, ...]:
    """``(major, minor)`` of a version string such as ``1.21.0`` or ``1.22.0.dev20250301``."""
    import re

    return tuple(int(p) for p in re.findall(r"\d+", text)[:2])
