"""Mapping a checkpoint between layouts of one family, through the family's hub layout.

Every non-hub layout is a table of rules to the hub (each family's record lists its layouts);
the way back is derived here by reading the same table from the hub side and taking
each transform's inverse. :func:`adapt` returns a lazy source: names, shapes and
dtypes are known at once; a tensor that needs a transform is materialised alone,
when it is read, and every other tensor keeps its zero-copy span.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType

from .. import dtypes
from ..errors import LayoutError
from ..formats._stream import read_span
from ..formats.base import Span, StorageView, TensorInfo, TensorSource, WrappedSource
from . import families, transforms
from .family import Layout, Rule

LAYOUTS: MappingProxyType = MappingProxyType(families.layouts())
# The layout each format implies, whatever the source's layout (the Meta format holds llama-meta).
FORMAT_LAYOUTS = MappingProxyType({lay.format: lay.id for lay in LAYOUTS.values() if lay.format})

# metadata key under which a source may state its layout
LAYOUT_KEY = "modelport.layout"

Step = tuple[str, dict]   # (transform name, arguments)


@lru_cache(maxsize=None)
def _regex(pattern: str) -> re.Pattern:
    return re.compile(re.escape(pattern).replace(r"\{bid\}", r"(?P<bid>\d+)") + r"\Z")


def _fill(pattern: str, bid: str | None) -> str:
    return pattern.replace("{bid}", bid) if bid is not None else pattern


def _match(patterns: list[tuple[str, Rule]], name: str) -> list[tuple[Rule, str | None]]:
    out = []
    for pattern, rule in patterns:
        m = _regex(pattern).match(name)
        if m:
            out.append((rule, m.groupdict().get("bid")))
    return out


def _only(found, name: str, where: str, source: TensorSource) -> tuple[Rule, str | None]:
    if not found:
        raise LayoutError(f"{source.path}: tensor {name!r} matches no rule of layout {where}; "
                          "the checkpoint is of another architecture or layout (see `modelport inspect`)")
    if len(found) > 1:
        a, b = found[0][0], found[1][0]
        raise LayoutError(f"{source.path}: tensor {name!r} matches two rules of layout {where} "
                          f"({a.name!r} -> {a.hub!r} and {b.name!r} -> {b.hub!r}); the layout table is ambiguous")
    return found[0]


def forward_patterns(layout: Layout) -> list[tuple[str, Rule]]:
    """Patterns of names in ``layout``, each with its rule to the hub."""
    return [(r.name, r) for r in layout.rules]


def reverse_patterns(layout: Layout) -> list[tuple[str, Rule]]:
    """Patterns of hub names, each with the rule of ``layout`` that holds it (derived)."""
    return [(r.hub, r) for r in layout.rules if r.hub is not None]


def inverse_step(rule: Rule, dims: dict, name: str) -> list[Step]:
    if rule.transform is None:
        return []
    return [(transforms.get(rule.transform).inverse, _args(rule, dims, name))]


def forward_step(rule: Rule, dims: dict, name: str) -> list[Step]:
    if rule.transform is None:
        return []
    return [(rule.transform, _args(rule, dims, name))]


def _args(rule: Rule, dims: dict, name: str) -> dict:
    args = {}
    for arg, dim in rule.args:
        if dims.get(dim) is None:
            raise LayoutError(f"tensor {name!r}: {rule.transform} needs the model's {dim}, and the source has no config "
                              "that gives it; pass --config config.json (or params.json)")
        args[arg] = int(dims[dim])
    return args


def _simplify(chain: list[Step]) -> list[Step]:
    """Drop a transform followed by its own inverse with the same arguments."""
    out: list[Step] = []
    for step in chain:
        if out and transforms.get(out[-1][0]).inverse == step[0] and out[-1][1] == step[1]:
            out.pop()
        else:
            out.append(step)
    return out


# -- model dimensions from an HF config.json ---------------------------------------------

def dims(family: str, config: dict | None) -> dict:
    """The model dimensions the rules and hub shapes speak of; absent keys are unknown."""
    return families.get(family).dims(config or {})


def _check_hub_shape(family: str, hub_pattern: str, shape: tuple, d: dict, name: str, hub: str, source: TensorSource) -> None:
    spec = families.get(family).hub_shapes.get(hub_pattern)
    if spec is None or any(s not in d for s in spec):
        return
    want = tuple(int(d[s]) for s in spec)
    if tuple(shape) != want:
        as_hub = f" (as {hub!r})" if hub != name else ""
        raise LayoutError(f"{source.path}: tensor {name!r}{as_hub} has shape {list(shape)} but the model's config "
                          f"needs {list(want)} ({', '.join(spec)}); the weights are of another size or orientation than the config")


# -- detection -------------------------------------------------------------------------

def _fits(layout: Layout, names: list[str]) -> tuple[int, str | None]:
    pats = forward_patterns(layout)
    hits, first_miss = 0, None
    for n in names:
        if _match(pats, n):
            hits += 1
        elif first_miss is None:
            first_miss = n
    return hits, first_miss


def _orientation_ok(layout: Layout, source: TensorSource) -> bool:
    if layout.orientation is None:
        return True
    pattern, want = layout.orientation
    for n in source.names():
        if _regex(pattern).match(n):
            shape = source.info(n).shape
            if len(shape) == 2 and shape[0] != shape[1]:
                return (shape[0] < shape[1]) == (want == "wide")
    return True


def detect_layout(source: TensorSource) -> Layout | None:
    """The layout of ``source`` from its metadata, its format or its tensor names (and, where
    layouts share names, the orientation of a weight); None when it fits none."""
    stated = (source.metadata or {}).get(LAYOUT_KEY)
    if stated in LAYOUTS:
        return LAYOUTS[stated]
    if source.format in FORMAT_LAYOUTS:
        return LAYOUTS[FORMAT_LAYOUTS[source.format]]
    names = source.names()
    if not names:
        return None
    fit = [lay for lay in LAYOUTS.values() if _fits(lay, names)[0] == len(names)]
    if len(fit) > 1:
        fit = [lay for lay in fit if _orientation_ok(lay, source)]
    if len(fit) > 1:     # a family whose hub holds another's names (Llama's fit Qwen2's hub): ask the names
        from .detect import family_from_names

        fam = family_from_names(list(names) + list(source.aliases()))
        fit = [lay for lay in fit if lay.family == fam]
    return fit[0] if len(fit) == 1 else None


def _closest(source: TensorSource) -> str:
    names = source.names()
    best = max(LAYOUTS.values(), key=lambda lay: _fits(lay, names)[0])
    hits, miss = _fits(best, names)
    if hits == 0:
        return "no tensor name fits any known layout"
    return f"closest is {best.id} ({hits} of {len(names)} names fit; {miss!r} does not)"


# -- the lazy mapped source --------------------------------------------------------------

@dataclass(frozen=True)
class _Entry:
    source_name: str
    chain: tuple[Step, ...]
    info: TensorInfo


class LayoutSource(WrappedSource):
    """``inner`` seen in another layout; transforms run per tensor on ``read_bytes``. Tensors are
    renamed, so nothing that names them passes through: shared storages are not kept (each tensor is
    written on its own) and the object tree is the inner source's business."""

    def __init__(self, inner: TensorSource, src: Layout, dst: Layout, model_dims: dict):
        super().__init__(inner)
        self.src_layout, self.layout = src, dst
        self.notes.append(f"layout {src.id} mapped to {dst.id}")
        self.dims = model_dims
        self._entries: dict[str, _Entry] = {}
        self._aliases: dict[str, str] = {}
        self.applied: list[dict] = []          # what the mapping does, as it decides it (for the manifest)
        origin: dict[str, str] = {}
        for name in inner.names():
            mapped = self._map(name)
            if mapped is None:
                continue
            target, chain, shape = mapped
            if target in self._entries:
                raise LayoutError(f"{inner.path}: tensors {origin[target]!r} and {name!r} both map to {target!r} in layout {dst.id}")
            origin[target] = name
            self._entries[target] = _Entry(name, tuple(chain), TensorInfo(target, inner.info(name).dtype, shape))
            self._record(name, target, chain)
        for alias, kept in inner.aliases().items():
            a, k = self._map(alias, inner.info(kept).shape), self._map(kept)
            if a is None or k is None:
                continue
            if a[1] == k[1]:
                self._aliases[a[0]] = k[0]
                self.applied.append({"op": "tie", "tensor": a[0], "to": k[0]})
            else:   # the tied copy needs another transform than its twin: a tensor of its own
                self._entries[a[0]] = _Entry(kept, tuple(a[1]), TensorInfo(a[0], inner.info(kept).dtype, a[2]))
                self.applied.append({"op": "untie", "tensor": a[0], "from": kept})
                self._record(kept, a[0], a[1])

    def _record(self, name: str, target: str, chain) -> None:
        if target != name:
            self.applied.append({"op": "rename", "from": name, "to": target})
        for t, args in chain:
            self.applied.append({"op": t, "tensor": target, **({"args": dict(args)} if args else {})})

    def _map(self, name: str, shape: tuple | None = None):
        """(target name, transforms, target shape), or None for a tensor the hub drops."""
        src, dst, d = self.src_layout, self.layout, self.dims
        rule, bid = _only(_match(forward_patterns(src), name), name, src.id, self.inner)
        if rule.hub is None:
            self.notes.append(f"dropped {name} (recomputed by the model)")
            self.applied.append({"op": "drop", "tensor": name, "why": "recomputed by the model"})
            return None
        hub = _fill(rule.hub, bid)
        chain = forward_step(rule, d, name)
        shape = tuple(self.inner.info(name).shape if shape is None else shape)
        for t, args in chain:
            shape = transforms.out_shape(t, shape, args, name)
        _check_hub_shape(src.family, rule.hub, shape, d, name, hub, self.inner)
        target = hub
        if not dst.is_hub:
            back, bid2 = _only(_match(reverse_patterns(dst), hub), hub, f"{dst.id} (from the hub)", self.inner)
            target = _fill(back.name, bid2)
            inv = inverse_step(back, d, name)
            for t, args in inv:
                shape = transforms.out_shape(t, shape, args, name)
            chain = chain + inv
        return target, _simplify(chain), shape

    def names(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        return self._entries[name].info

    def aliases(self) -> dict[str, str]:
        return dict(self._aliases)

    def transforms_of(self, name: str) -> list[str]:
        """The transforms applied to tensor ``name``, as calls (for notes and tests)."""
        return [transforms.call(t, a) for t, a in self._entries[name].chain]

    def inverse_transforms_of(self, name: str) -> list[str]:
        """The transforms that take tensor ``name`` back to the inner source's layout, as calls."""
        return [transforms.call(transforms.get(t).inverse, a) for t, a in reversed(self._entries[name].chain)]

    def source_name(self, name: str) -> str:
        return self._entries[name].source_name

    def span(self, name: str) -> Span | None:
        e = self._entries[name]
        return None if e.chain else self.inner.span(e.source_name)

    def read_bytes(self, name: str):
        e = self._entries[name]
        if not e.chain or e.info.numel == 0:
            return self.inner.read_bytes(e.source_name)
        import numpy as np

        span = self.inner.span(e.source_name)
        # from a file span: one private copy of this tensor, and no mapped pages left behind
        data = read_span(span) if span is not None else self.inner.read_bytes(e.source_name)

        src_info = self.inner.info(e.source_name)
        a = np.frombuffer(data, dtype=np.dtype(dtypes.get(src_info.dtype).numpy)).reshape(src_info.shape)
        for t, args in e.chain:
            a = transforms.get(t).apply(a, **args)
        a = np.ascontiguousarray(a)
        if a.shape != e.info.shape:
            raise RuntimeError(f"{name}: transforms gave shape {a.shape}, expected {e.info.shape}")
        return memoryview(a.reshape(-1).view(np.uint8))

    def storage_view(self, name: str) -> StorageView | None:
        return None

    def read_storage_bytes(self, key: str):
        raise NotImplementedError

    def storage_span(self, key: str) -> Span | None:
        return None

    def tree(self) -> str | None:
        return None


def to_layout(source: TensorSource, want: str, config: dict | None) -> TensorSource:
    """``source`` in layout ``want`` (an id), with model dimensions from ``config`` (a config.json
    dict): the source itself when it is already there, else a lazy :class:`LayoutSource`."""
    if want not in LAYOUTS:
        raise LayoutError(f"unknown layout {want!r}; known layouts: {', '.join(LAYOUTS)}")
    dst = LAYOUTS[want]
    src = detect_layout(source)
    if src is None:
        raise LayoutError(f"{source.path}: cannot map to layout {want}: the tensor names fit no known layout "
                          f"({_closest(source)}); known layouts: {', '.join(LAYOUTS)}")
    if src.family != dst.family:
        raise LayoutError(f"{source.path}: the checkpoint is in layout {src.id} ({src.family}); "
                          f"layout {want} is for {dst.family} models")
    if src is dst:
        return source
    out = LayoutSource(source, src, dst, dims(src.family, config))
    if out.config is None:
        out.config = config
    return out


def hub_of(family: str) -> str:
    """The id of the family's hub layout."""
    return families.get(family).hub.id


def align(b: TensorSource, a: TensorSource) -> TensorSource:
    """``b`` in ``a``'s layout when both are known layouts of one family (for ``diff``), else ``b``.

    When ``b`` cannot be mapped (no head counts for a rotary permutation, a tensor outside the
    tables), ``b`` is compared under its own names and the reason is kept in ``b.notes``."""
    la, lb = detect_layout(a), detect_layout(b)
    if la is None or lb is None or la is lb or la.family != lb.family:
        return b
    config = a.config if a.config is not None else b.config
    try:
        return LayoutSource(b, lb, la, dims(la.family, config))
    except LayoutError as exc:
        b.notes.append(f"not mapped from layout {lb.id} to {la.id}: {exc}")
        return b


__all__ = ["align", "LAYOUTS", "LayoutSource", "detect_layout", "dims", "hub_of", "to_layout"]
