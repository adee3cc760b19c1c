"""Find the first block whose output differs: per-layer outputs of both models through one name map.

Names are the reference model's module names (``model.layers.3``), which the conversion keeps: the
reference families use Hugging Face names, and an export keeps them as module scopes. Each runnable
captures its own (``Runnable.capture``, :mod:`modelport.models.capture`):

- torch eager: forward hooks on every block and on each block's direct children;
- onnxruntime: the values leaving each module scope (``/model/layers.3/``) of an exported graph are
  added as outputs to a copy of the graph, run in a session with the same providers;
- TorchScript: each scripted block is called with the inputs the reference block received, so a
  block is judged on its own (a fault does not spread into later layers).

The first block whose output exceeds tolerance is the divergence; within it, the first child (in
the order they ran) that does names the part (``model.layers.3.self_attn``).

With a torch reference and calibrated tolerances, every block is instead fed the float64 reference's
input and judged per element against its own rounding (:func:`_isolated_divergence`, :mod:`.isolate`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

# the capture itself is the runnable's (Runnable.capture); these names stay importable from here
from ..models.capture import (_first_tensor, _prefixed_scope_values, _session_beside, _submodule,  # noqa: F401
                              capture_hooks, capture_onnx, named_root, onnx_scope, onnx_scope_values,
                              replay_script, scope_values_and_membership, script_prefix)
from .metrics import Tolerance, compare_tensors


@dataclass
class Divergence:
    """Where the candidate first leaves the reference."""

    layer: int | None                # block index; None: every block matched (the head or final norm differs)
    name: str | None                 # the module named: a block's child when one was found, else the block
    block: str | None
    max_abs: float | None
    matched: list[int] = field(default_factory=list)
    method: str = ""                 # hooks | onnx-outputs | torchscript-replay
    layers: int = 0                  # blocks compared
    fed: int = 0                     # blocks fed the float64 reference's input (judged in isolation)
    floors: float | None = None      # the named module's error in floors (its own rounding), when calibrated

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        err = "non-finite" if self.max_abs is None else f"max abs {self.max_abs:.3g}"
        if self.floors is not None:
            err += f" = {self.floors:.3g} x its floor"
        if self.layer is None and self.name is not None:
            return f"first divergence: {self.name}, before the first block ({err})"
        if self.layer is None:
            return (f"first divergence: after the last block (all {self.layers} blocks match; "
                    "the final norm or the output head differs)")
        before = ("no layer before it" if not self.matched else
                  f"layer {self.matched[0]} matches" if len(self.matched) == 1 else
                  f"layers {self.matched[0]}–{self.matched[-1]} match")
        if self.fed:
            before += ", each block fed the reference's input"
        return f"first divergence: layer {self.layer} ({self.name}, {err}); {before}"


def _is_script(module) -> bool:
    import torch

    return isinstance(module, torch.jit.ScriptModule)


def block_names(module) -> list[str]:
    """The model's blocks in order: a known family's block list, else the longest module list, else
    the top-level children (a Lua ``nn.Sequential`` rebuild)."""
    from torch import nn

    from ..models.families import all_families

    names = dict(module.named_modules())
    for prefix in dict.fromkeys(f.blocks for f in all_families() if f.blocks):
        if prefix in names:
            return [f"{prefix}.{i}" for i in range(len(names[prefix]))]
    lists = [(n, m) for n, m in names.items() if n and isinstance(m, nn.ModuleList)]
    if lists:
        name, best = max(lists, key=lambda nm: len(nm[1]))
        return [f"{name}.{i}" for i in range(len(best))]
    return [n for n, _ in module.named_children()]


def child_names(module, block: str) -> list[str]:
    return [f"{block}.{n}" for n, _ in module.get_submodule(block).named_children()]


def _torch_eager(r) -> bool:
    return r.backend in ("torch", "torchscript") and r.module is not None and not _is_script(r.module)


def _capture(runnable, names, feeds, ref_inputs):
    """The named modules' outputs of ``runnable`` and how they were read (see ``Runnable.capture``)."""
    return runnable.capture(names, feeds, ref_inputs=ref_inputs)


def _row_feeds(feeds: dict) -> dict:
    """The first row of a batch on its real tokens only: an exact-precision run without padding."""
    mask = feeds.get("attention_mask")
    keep = mask[0].bool() if mask is not None else None
    return {k: (v[:1, keep] if keep is not None and v.dim() >= 2 else v[:1]) for k, v in feeds.items()}


def _judge(hi, lo, cand_t, dtype: str, factor: float):
    """(passed, max abs, floors) of one module's candidate output against the float64 reference ``hi``, the
    reference at ``dtype`` (``lo``) giving the floor; None when it cannot be judged (a shape that does not fit).

    Judged **per channel** (the last dimension): a residual stream carries a few channels hundreds of times
    larger than the rest, whose rounding would otherwise set one floor for all of them and hide a fault in
    the others. Each channel's floor is its own ``max |lo - hi|`` over the positions, raised to the 90th
    percentile of the channels' floors: channels with ordinary values share one floor, and only the few
    with unusually large values keep a larger one of their own. A single element's rounding is a noisy
    draw (the float32 run may round a large value luckily well), so each element is also allowed 4 ulps
    of its own magnitude: an element passes up to ``factor * max(channel floor, 4 ulps of itself)``.
    A systematic fault (a weight scaled by 1.001 is about 8000 float32 ulps) stays far beyond both."""
    import torch

    from .calibrate import _EPS, _ULPS

    if cand_t.shape != hi.shape:
        if cand_t.numel() != hi.numel():
            return None
        cand_t = cand_t.reshape(hi.shape)
    if lo.shape != hi.shape:
        return None
    hi, lo, cand_t = (t.detach().cpu().double() for t in (hi, lo, cand_t))
    if not bool(cand_t.isfinite().all()) and bool(hi.isfinite().all()):
        return False, None, None           # the candidate overflows where exact arithmetic does not
    channels = hi.shape[-1] if hi.dim() else 1
    hi, lo, cand_t = (t.reshape(-1, channels) for t in (hi, lo, cand_t))
    keep = hi.isfinite() & lo.isfinite() & cand_t.isfinite()
    if not bool(keep.any()):
        return None
    zero = torch.zeros((), dtype=torch.float64)
    floor = torch.where(keep, (lo - hi).abs(), zero).amax(0)
    floor = torch.maximum(floor, floor.quantile(0.9))
    own = _ULPS * _EPS.get(dtype, _EPS["float32"]) * hi.abs()
    unit = torch.maximum(floor.expand_as(hi), own)                 # the element's floor
    err = torch.where(keep, (cand_t - hi).abs(), zero)
    ratio = torch.where(unit > 0, err / unit.clamp_min(torch.finfo(torch.float64).tiny),
                        torch.where(err > 0, torch.full_like(err, float("inf")), zero))
    worst = float(ratio.max())
    return worst <= factor, float(err.max()), worst


def _isolated_divergence(ref, cand, feeds: dict, dtype: str, factor: float, replay_from=None) -> Divergence | None:
    """The calibrated layer search with every block fed the float64 reference's input (see :mod:`.isolate`)."""
    import torch

    from .. import dtypes
    from .calibrate import _cast, _cast_feeds
    from .isolate import capture_onnx_fed, entry_module, replay_fed, run_hooked

    root = named_root(ref.module)
    blocks = block_names(root)
    if not blocks:
        return None
    children = {b: child_names(root, b) for b in blocks}
    names = blocks + [c for b in blocks for c in children[b]]
    feeds = _row_feeds(feeds)
    target = dtypes.to_torch(dtype)
    with _cast(ref, "float64") as r64:
        f64 = _cast_feeds(feeds, torch.float64)
        nat64 = run_hooked(r64, blocks, names, f64, all_modules=True)
        entry = entry_module(nat64, blocks)
        watched = names + ([entry] if entry else [])
        fed = {b: nat64.hidden[b].to(target) for b in blocks if b in nat64.hidden}
        iso64 = run_hooked(r64, blocks, watched, f64, fed=fed)
    with _cast(ref, dtype) as rd:
        fd = _cast_feeds(feeds, target)
        natd = run_hooked(rd, blocks, watched, fd)
        isod = run_hooked(rd, blocks, watched, fd, fed=fed, keep_args=True)
    if cand.backend == "onnxruntime":
        cand_out, done = capture_onnx_fed(cand, blocks, names, entry, feeds, fed)
        method = "onnx-outputs"
    elif _is_script(cand.module):
        args = isod.args
        if replay_from is not None:
            with _cast(replay_from, dtype) as conv:
                args = run_hooked(conv, blocks, watched, fd, fed=fed, keep_args=True).args
        own = next((p.dtype for p in cand.module.parameters() if p.is_floating_point()), target)
        cand_out = replay_fed(cand, args, watched, own)
        done, method = {b for b in blocks if b in cand_out}, "torchscript-replay"
    else:
        cap = run_hooked(cand, blocks, watched, feeds, fed=fed)
        cand_out, done, method = cap.outputs, {b for b in fed if b in cap.hidden}, "hooks"
    compared = [b for b in blocks if b in cand_out and b in iso64.outputs]
    if not compared:
        return None

    def check(name, block):
        if name not in cand_out:
            return None
        hi, lo = (iso64, isod) if block in done else (nat64, natd)
        if name not in hi.outputs or name not in lo.outputs:
            return None
        return _judge(hi.outputs[name], lo.outputs[name], cand_out[name], dtype, factor)

    fed_count = len(done & set(compared))
    if entry and entry in cand_out:
        v = check(entry, None)
        if v is not None and not v[0]:
            return Divergence(None, entry, None, v[1], [], method, len(compared), fed_count, v[2])
    matched = []
    for i, block in enumerate(blocks):
        if block not in compared:
            continue
        ran = [n for n in iso64.order if n in children[block]]
        ran += [c for c in children[block] if c not in ran]
        failing = None
        for name in ran + [block]:
            v = check(name, block)
            if v is not None and not v[0]:
                failing = (name, v)
                break
        if failing is None:
            matched.append(i)
            continue
        name, v = failing
        return Divergence(i, name, block, v[1], matched, method, len(compared), fed_count, v[2])
    return Divergence(None, None, None, None, matched, method, len(compared), fed_count)


@dataclass
class Recorded:
    """The reference's side of the layer search: its per-module outputs on ``feeds`` (and the positional inputs
    each received, which a TorchScript candidate's blocks are called with), in call order, for the search with
    fixed tolerances. Recorded while the reference runs, so the reference model can be released before any
    candidate is loaded (the calibrated search feeds every block itself and loads the reference again)."""

    blocks: list[str]
    children: dict[str, list[str]]
    feeds: dict
    outputs: dict
    inputs: dict
    order: list[str]

    @property
    def names(self) -> list[str]:
        return self.blocks + [c for b in self.blocks for c in self.children[b]]


def module_names(namer) -> tuple[list[str], dict[str, list[str]]]:
    """The blocks of ``namer``'s model and each block's children (empty when it has none)."""
    blocks = block_names(named_root(namer.module))
    return blocks, {b: child_names(named_root(namer.module), b) for b in blocks}


def _record_live(ref, cand, feeds: dict) -> Recorded | None:
    """The reference's side of the uncalibrated search from the live reference model (names from whichever
    side is eager torch)."""
    namer = ref if _torch_eager(ref) else cand if _torch_eager(cand) else None
    if namer is None:
        return None
    blocks, children = module_names(namer)
    if not blocks:
        return None
    names = blocks + [c for b in blocks for c in children[b]]
    if _torch_eager(ref):
        ref_out, ref_in, order = capture_hooks(ref, names, feeds, keep_inputs=True)
    else:
        ref_out, ref_in, order = _capture(ref, names, feeds, {})[0], {}, names
    return Recorded(blocks, children, feeds, ref_out, ref_in, order)


def first_divergence(ref, cand, feeds: dict, tol: Tolerance, factor: float | None = None,
                     replay_from=None, recorded: Recorded | None = None) -> Divergence | None:
    """Compare per-block outputs of ``ref`` and ``cand`` on ``feeds``; None when no block names could be
    matched on both sides (the report then says the layer was not located). With ``factor`` (a torch
    reference), every block is fed the float64 reference's input and held to ``factor`` times the
    reference's own error there (see :mod:`.isolate`), on the first row of ``feeds`` without padding;
    otherwise the blocks' outputs after a whole run are held to ``tol``. A TorchScript
    candidate's blocks are called with the inputs ``replay_from``'s blocks received (default: the
    reference's), a model with the calling convention the script was made from. ``recorded`` is the
    reference's side recorded earlier, for the uncalibrated search (``ref`` and ``feeds`` are then not used)."""
    if recorded is None:
        namer = ref if _torch_eager(ref) else cand if _torch_eager(cand) else None
        if namer is None or not block_names(named_root(namer.module)):
            return None
        if factor is not None and _torch_eager(ref):
            return _isolated_divergence(ref, cand, feeds, tol.dtype, factor, replay_from)
        recorded = _record_live(ref, cand, feeds)
        if recorded is None:
            return None
    blocks, children, names, feeds = recorded.blocks, recorded.children, recorded.names, recorded.feeds
    mask = feeds.get("attention_mask")
    ref_out, ref_in, order = recorded.outputs, recorded.inputs, recorded.order
    if replay_from is not None and _is_script(cand.module):
        ref_in = capture_hooks(replay_from, names, feeds, keep_inputs=True)[1]
    cand_out, method = _capture(cand, names, feeds, ref_in)
    compared = [b for b in blocks if b in ref_out and b in cand_out]
    if not compared:
        return None

    def check(name):
        """(passed, max abs) of one module, or None when it cannot be judged."""
        if name not in ref_out or name not in cand_out:
            return None
        c = compare_tensors(ref_out[name], cand_out[name], tol, output=name, inputs="", mask=mask)
        return c.passed, c.max_abs

    matched = []
    for i, block in enumerate(blocks):
        verdict = check(block) if block in compared else None
        if verdict is None:
            continue
        if verdict[0]:
            matched.append(i)
            continue
        name, worst = block, verdict[1]
        ran = [n for n in order if n in children[block]] or children[block]
        for child in ran:
            cv = check(child)
            if cv is not None and not cv[0]:
                name, worst = child, cv[1]
                break
        return Divergence(i, name, block, worst, matched, method, len(compared))
    return Divergence(None, None, None, None, matched, method, len(compared))
