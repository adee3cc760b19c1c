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

    def to_json(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        err = "non-finite" if self.max_abs is None else f"max abs {self.max_abs:.3g}"
        if self.layer is None:
            return (f"first divergence: after the last block (all {self.layers} blocks match; "
                    "the final norm or the output head differs)")
        before = ("no layer before it" if not self.matched else
                  f"layer {self.matched[0]} matches" if len(self.matched) == 1 else
                  f"layers {self.matched[0]}–{self.matched[-1]} match")
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


def _calibrated_runs(ref, names, feeds, dtype: str) -> dict[str, dict]:
    """The reference's per-module outputs on ``feeds`` at float64 and at ``dtype``."""
    from .. import dtypes
    from .calibrate import _cast, _cast_feeds

    runs = {}
    for d in dict.fromkeys(("float64", dtype)):
        with _cast(ref, d) as rr:
            runs[d] = capture_hooks(rr, names, _cast_feeds(feeds, dtypes.to_torch(d)))[0]
    return runs


def _calibrated_judge(hi: dict | None, lo: dict | None, dtype: str, factor: float):
    """A judge that holds a candidate's module to ``factor`` times the reference's own error at ``dtype`` there
    (``lo``: the reference's per-module outputs at ``dtype``, ``hi``: at float64); None without both."""
    from .calibrate import Floor, max_error, peak

    if hi is None or lo is None:
        return None

    def judge(name, cand_t):
        if name not in hi or name not in lo:
            return None
        floor = max_error(lo[name], hi[name])
        if floor is None:
            return None
        allowed = Floor(floor, peak(hi[name]), dtype, factor).allowed
        err = max_error(cand_t, hi[name])
        if err is None or not bool(cand_t.isfinite().all()):
            return False, None
        return err <= allowed, err

    return judge


@dataclass
class Recorded:
    """The reference's side of the layer search: its per-module outputs on ``feeds`` (and the positional inputs
    each received, which a TorchScript candidate's blocks are called with), in call order, and, for the calibrated
    judge, at float64 and at each precision checked (``at``). Recorded while the reference runs, so the reference
    model can be released before any candidate is loaded."""

    blocks: list[str]
    children: dict[str, list[str]]
    feeds: dict
    outputs: dict
    inputs: dict
    order: list[str]
    at: dict[str, dict] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return self.blocks + [c for b in self.blocks for c in self.children[b]]


def module_names(namer) -> tuple[list[str], dict[str, list[str]]]:
    """The blocks of ``namer``'s model and each block's children (empty when it has none)."""
    blocks = block_names(named_root(namer.module))
    return blocks, {b: child_names(named_root(namer.module), b) for b in blocks}


def _record_live(ref, cand, feeds: dict, dtype: str, factor: float | None) -> Recorded | None:
    """The reference's side of the search from the live reference model (names from whichever side is eager torch)."""
    namer = ref if _torch_eager(ref) else cand if _torch_eager(cand) else None
    if namer is None:
        return None
    blocks, children = module_names(namer)
    if not blocks:
        return None
    names = blocks + [c for b in blocks for c in children[b]]
    at = {}
    if factor is not None and _torch_eager(ref):
        feeds = _row_feeds(feeds)
        at = _calibrated_runs(ref, names, feeds, dtype)
    if _torch_eager(ref):
        ref_out, ref_in, order = capture_hooks(ref, names, feeds, keep_inputs=True)
    else:
        ref_out, ref_in, order = _capture(ref, names, feeds, {})[0], {}, names
    return Recorded(blocks, children, feeds, ref_out, ref_in, order, at)


def first_divergence(ref, cand, feeds: dict, tol: Tolerance, factor: float | None = None,
                     replay_from=None, recorded: Recorded | None = None) -> Divergence | None:
    """Compare per-block outputs of ``ref`` and ``cand`` on ``feeds``; None when no block names could be
    matched on both sides (the report then says the layer was not located). With ``factor`` (a torch
    reference), each block is held to ``factor`` times the reference's own error there (see
    :mod:`.calibrate`), on the first row of ``feeds`` without padding; otherwise to ``tol``. A TorchScript
    candidate's blocks are called with the inputs ``replay_from``'s blocks received (default: the
    reference's), a model with the calling convention the script was made from. ``recorded`` is the
    reference's side recorded earlier (``ref`` and ``feeds`` are then not used)."""
    if recorded is None:
        recorded = _record_live(ref, cand, feeds, tol.dtype, factor)
        if recorded is None:
            return None
    blocks, children, names, feeds = recorded.blocks, recorded.children, recorded.names, recorded.feeds
    judge = None
    if factor is not None and recorded.at:
        judge = _calibrated_judge(recorded.at.get("float64"), recorded.at.get(tol.dtype), tol.dtype, factor)
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
        if judge is not None:
            verdict = judge(name, cand_out[name])
            if verdict is not None:
                return verdict
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
