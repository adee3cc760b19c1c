"""The layer search on a torch reference: every block fed the reference's input and held to its own rounding.

Comparing each block's output after a whole forward pass cannot place a small systematic fault. Float
rounding enters at every block and travels down the residual stream, so the reference's own error at
block 20 of a 30-layer model is already the sum of twenty blocks' rounding; a projection scaled by
1.001 at block 20 adds less than that, and is first seen several blocks later, where its effect has
grown (SmolLM2-135M: planted at layer 20, named at layer 29). What separates the two is not the size
of the error but where it is created: rounding is created a little in every block, a fault in one.

So each block is checked **in isolation**. Its hidden-state input is replaced by the float64
reference's input to that block, rounded to the candidate's precision, in every run: the float64
reference, the reference at the candidate's precision and the candidate itself all compute block *i*
from the same numbers. The error a block shows is then its own: for the reference at the candidate's
precision one block's rounding (the **floor**), for an honest candidate about the same, for a faulty
block the fault at full size (a 0.1% change of a projection is about 10^4 float32 roundings). The
block and each of its direct children (attention, MLP, norms) are judged by the calibration of
:mod:`.calibrate`: ``max |cand - ref64| <= max(factor * floor, 4 ulps of the largest value)``.

The modules that produce the first block's input (the embedding) are judged the same way, unfed.

How a candidate's block is fed, per backend:

- torch eager: a forward pre-hook replaces the block's hidden-state argument;
- TorchScript: each scripted block (and child) is called with the reference-precision run's inputs to it,
  whose hidden state was the fed one;
- onnxruntime: in a copy of the graph, the nodes of block *i*'s scope that read the value leaving
  block *i-1* (or the embedding) read a new graph input instead, so one session run computes every
  block from its own fed input. A block whose input value is not found runs unfed and is judged
  against the unfed floor (the reference at the candidate's precision, run whole).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

FED_INPUT = "modelport.fed."          # graph input names of the fed blocks (ONNX)


@dataclass
class Capture:
    """One run: the named modules' outputs, each block's hidden input, and every named module's positional inputs."""

    outputs: dict
    hidden: dict
    args: dict
    order: list


def _hidden_slot(args, kwargs):
    """Where a block receives its hidden state: the first floating positional argument, else ``hidden_states``."""
    import torch

    if args and isinstance(args[0], torch.Tensor) and args[0].is_floating_point():
        return 0
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return "hidden_states"
    return None


def _first_tensor(out):
    from ..models.capture import _first_tensor as first

    return first(out)


@contextmanager
def _hooked(root, blocks: list[str], names: list[str], fed: dict | None, cap: Capture, keep_args: bool,
            all_modules: bool = False):
    """Hooks for one run: blocks in ``fed`` get that hidden state (cast to what they would have received);
    outputs of ``names`` (and, with ``all_modules``, of every module outside the blocks) are captured."""
    import torch

    modules = dict(root.named_modules())
    handles = []
    block_set = set(blocks)

    def pre(mod, args, kwargs, name):
        slot = _hidden_slot(args, kwargs)
        if slot is None:
            return None
        own = args[slot] if slot == 0 else kwargs[slot]
        if fed is not None and name in fed:
            new = fed[name].to(dtype=own.dtype, device=own.device)
            if slot == 0:
                args = (new, *args[1:])
            else:
                kwargs = {**kwargs, slot: new}
            own = new
        cap.hidden.setdefault(name, own.detach())
        return args, kwargs

    def post(mod, args, out, name):
        t = _first_tensor(out)
        if t is not None and name not in cap.outputs:
            cap.outputs[name] = t.detach()
            cap.order.append(name)
            if keep_args:
                cap.args[name] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)

    watch = list(names)
    if all_modules:
        watch += [n for n in modules if n and not any(n == b or n.startswith(b + ".") for b in blocks)]
    for name in dict.fromkeys(watch):
        if name not in modules:
            continue
        if name in block_set:
            handles.append(modules[name].register_forward_pre_hook(
                lambda m, a, k, name=name: pre(m, a, k, name), with_kwargs=True))
        handles.append(modules[name].register_forward_hook(lambda m, a, o, name=name: post(m, a, o, name)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def run_hooked(runnable, blocks, names, feeds, fed=None, keep_args=False, all_modules=False) -> Capture:
    """One run of a torch-eager ``runnable`` with blocks fed (``fed``: block name -> hidden state)."""
    from ..models.capture import named_root

    cap = Capture({}, {}, {}, [])
    with _hooked(named_root(runnable.module), blocks, names, fed, cap, keep_args, all_modules):
        runnable.run(feeds)
    return cap


def entry_module(cap: Capture, blocks: list[str]) -> str | None:
    """The module whose output is the first block's input (the embedding), from a run that watched every module."""
    import torch

    first = cap.hidden.get(blocks[0]) if blocks else None
    if first is None:
        return None
    ancestors = {blocks[0].rsplit(".", i)[0] for i in range(1, blocks[0].count(".") + 1)}
    found = None
    for name in cap.order:
        if name == blocks[0]:
            break
        t = cap.outputs[name]
        if name not in ancestors and t.shape == first.shape and t.dtype == first.dtype and torch.equal(t, first):
            found = name
    return found


# ---------------------------------------------------------------------------------------------- ONNX

def _elem_types(model, values: list[str]) -> dict[str, int]:
    """The element type of each value, by shape inference on a copy of the graph without its weights."""
    import onnx

    g = model.graph
    light_inputs = list(g.input) + [onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                                    for t in g.initializer if t.name not in {i.name for i in g.input}]
    graph = onnx.helper.make_graph(list(g.node), "types", light_inputs, list(g.output))
    light = onnx.helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    try:
        inferred = onnx.shape_inference.infer_shapes(light).graph
    except Exception:  # noqa: BLE001 - inference is a hint; the caller falls back to the outputs' type
        return {}
    known = {v.name: v.type.tensor_type.elem_type for v in list(inferred.value_info) + list(inferred.output)}
    return {v: known[v] for v in values if known.get(v)}


def capture_onnx_fed(runnable, blocks: list[str], names: list[str], entry: str | None, feeds: dict, fed: dict):
    """Outputs of the named scopes of an onnxruntime graph with each block's input replaced by ``fed``;
    returns (outputs by name, the set of blocks that were fed)."""
    import numpy as np
    import onnx
    import torch

    from ..runtime import import_onnxruntime
    from ..models.capture import _session_beside, scope_values_and_membership

    if runnable.path is None:
        return {}, set()
    from ..formats.onnx import load_for_session

    model = load_for_session(Path(runnable.path))       # the weights stay in the file, read by onnxruntime
    wanted = names + ([entry] if entry else [])
    values, inside = scope_values_and_membership(model, wanted)
    if not values:
        return {}, set()
    graph = model.graph
    redirect: dict[str, tuple[str, str]] = {}     # block -> (the module before it, the value leaving that module)
    for i, block in enumerate(blocks):
        before = blocks[i - 1] if i else entry
        if block in fed and before in values:
            redirect[block] = before, values[before]
    types = _elem_types(model, [v for _, v in redirect.values()])
    out_type = next((o.type.tensor_type.elem_type for o in graph.output), onnx.TensorProto.FLOAT)
    fed_arrays, done = {}, set()
    for i, (block, (before, value)) in enumerate(redirect.items()):
        new = f"{FED_INPUT}{i}"
        hits = 0
        for j, node in enumerate(graph.node):      # every reader outside the module that made it (a reshape
            if not inside(j, before) and value in node.input:   # between two scopes reads the fed value too)
                for k, v in enumerate(node.input):
                    if v == value:
                        node.input[k] = new
                        hits += 1
        if not hits:
            continue
        elem = types.get(value, out_type)
        graph.input.append(onnx.helper.make_tensor_value_info(new, elem, None))
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(elem)
        fed_arrays[new] = fed[block].detach().cpu().double().numpy().astype(np_dtype)
        done.add(block)
    present = {o.name for o in graph.output}
    for v in values.values():
        if v not in present:
            graph.output.append(onnx.ValueInfoProto(name=v))
            present.add(v)
    ort = import_onnxruntime()
    providers = runnable.module.get_providers() if hasattr(runnable.module, "get_providers") else ["CPUExecutionProvider"]
    session = _session_beside(ort, model, Path(runnable.path), providers)
    arrays = {**runnable.arrays(feeds), **fed_arrays}
    outs = list(dict.fromkeys(values.values()))
    got = dict(zip(outs, session.run(outs, arrays)))
    return {name: torch.from_numpy(np.asarray(got[v])) for name, v in values.items()}, done


# ----------------------------------------------------------------------------------------- TorchScript

def replay_fed(runnable, args: dict, names: list[str], dtype) -> dict:
    """Each named submodule of a TorchScript model called with ``args`` (the positional inputs a run of the
    script's own convention received, its blocks fed), floating inputs cast to ``dtype``."""
    import torch

    from ..models.capture import _submodule, script_prefix

    outputs = {}
    prefix = script_prefix(runnable)
    for name in names:
        if name not in args:
            continue
        call = [a.to(device=runnable.device, dtype=dtype) if isinstance(a, torch.Tensor) and a.is_floating_point()
                else a.to(runnable.device) if isinstance(a, torch.Tensor) else a for a in args[name]]
        try:
            sub = _submodule(runnable.module, prefix + name)
            with torch.no_grad():
                try:
                    out = sub(*call)
                except RuntimeError:            # a traced block takes its arguments as tensors (a mask, not None)
                    out = sub(*_traced_args(sub, call))
        except (AttributeError, RuntimeError, TypeError):
            continue
        t = _first_tensor(out)
        if t is not None:
            outputs[name] = t.detach()
    return outputs


def _traced_args(sub, call: list) -> list:
    """``call`` fitted to a traced submodule's declared arguments: a traced transformers layer takes the
    attention mask as a tensor where the eager call passed None (no padding), so None becomes an additive
    mask of zeros over the hidden state's positions (1, 1, 1, T), and arguments beyond the declared ones go."""
    import torch

    n = len(sub.forward.schema.arguments) - 1
    hidden = next((a for a in call if isinstance(a, torch.Tensor) and a.dim() == 3), None)
    if hidden is None:
        raise TypeError("no hidden state among the arguments")
    zeros = torch.zeros(hidden.shape[0], 1, 1, hidden.shape[1], dtype=hidden.dtype, device=hidden.device)
    fitted = [zeros if a is None else a for a in call[:n]]
    return fitted + [zeros] * (n - len(fitted))

