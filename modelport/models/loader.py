"""Weights in, runnable model out: ``load_model(path)`` for any readable format with a known architecture.

Loading is strict: every tensor the model has must come from the file (a tied output embedding may be
absent), and every tensor in the file must land in the model, except buffers older checkpoints carry
that the model recomputes (causal masks, rotary ``inv_freq``). Anything else is a LayoutError that
lists the names.

The model is built on the meta device, so no time goes into random initialisation, and each tensor is
read, cast and moved on its own: peak memory is the model plus one tensor.
"""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from typing import Any

from .. import dtypes
from ..errors import SPELLING, LayoutError, UnsupportedError
from ..runtime import need_torch
from ..formats.base import Options, TensorSource
from . import detect, families
from .strict import key_mismatch
from .config import config_from_hf, normalize_arch
from .spec import LoadSpec, random_tensor
from .spec import torch_dtype as to_torch_dtype

ModelConfig = Any     # the config dataclass of a family (see modelport.models.families)


# torch.nn.init functions the reference modules' constructors call. On the meta device each call still
# dispatches through torch's Python reference kernels, whose first use imports torch._refs & co. (seconds);
# every parameter is replaced by the checkpoint's tensor, so the initialisation is skipped altogether.
_INIT_FUNCTIONS = ("normal_", "uniform_", "trunc_normal_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_",
                   "xavier_normal_", "zeros_", "ones_", "constant_")


@contextlib.contextmanager
def _no_init():
    import torch.nn.init as init

    saved = {name: getattr(init, name) for name in _INIT_FUNCTIONS}
    try:
        for name in _INIT_FUNCTIONS:
            setattr(init, name, lambda tensor, *args, **kwargs: tensor)
        yield
    finally:
        for name, fn in saved.items():
            setattr(init, name, fn)


def build_model(cfg: ModelConfig, device="meta"):
    """The reference model for ``cfg``, with uninitialised parameters on ``device`` (meta by default)."""
    torch = need_torch("building a reference model (inspect --run, load_model, checking an inferred config)")

    cls = families.get(cfg.family).model_class()
    with torch.device(device), _no_init():
        return cls(cfg)


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every state-dict name of the reference model for ``cfg`` with its shape (tied names included)."""
    model = build_model(cfg)
    return {name: tuple(t.shape) for name, t in model.state_dict(keep_vars=True).items()}


def _tied_names(cfg: ModelConfig) -> dict[str, str]:
    """Output-embedding name -> input-embedding name, when the config ties them."""
    if not cfg.tie_word_embeddings:
        return {}
    out_name, in_name = families.get(cfg.family).tied
    return {out_name: in_name}


def plan_names(source: TensorSource, cfg: ModelConfig) -> dict[str, str]:
    """Model parameter name -> source tensor name; a LayoutError listing missing and unexpected names."""
    need_torch("checking tensor shapes against a model config")
    record = families.get(cfg.family)
    derived = [re.compile(p) for p in record.derived_buffers]
    renames = record.renames
    expected = expected_shapes(cfg)
    prefix = record.prefix
    aliases = source.aliases()
    available = list(source.names()) + list(aliases)
    # A base-model checkpoint (GPT2Model, LlamaModel …) stores names without the prefix.
    add_prefix = not any(n.startswith(prefix) for n in available)
    plan: dict[str, str] = {}
    unexpected = []
    for name in available:
        if any(p.search(name) for p in derived):
            continue
        target = renames.get(name, name)
        if target not in expected and add_prefix and prefix + target in expected:
            target = prefix + target
        if target not in expected:
            unexpected.append(name)
        elif target in plan:
            raise LayoutError(f"{source.path}: tensors {plan[target]!r} and {name!r} both map to {target!r}; remove one")
        else:
            plan[target] = name
    for out_name, in_name in _tied_names(cfg).items():
        if out_name not in plan and in_name in plan:
            plan[out_name] = plan[in_name]
    missing = [n for n in expected if n not in plan]
    if missing or unexpected:
        raise LayoutError(f"{source.path}: the weights do not fit a {cfg.family} model with this config "
                          f"({key_mismatch(missing, unexpected)}); "
                          "check --arch / --config, or convert the layout first")
    for target, name in plan.items():
        have = tuple(source.info(aliases.get(name, name)).shape)
        if have != expected[target]:
            slot = f" for {target!r}" if target != name else ""
            raise LayoutError(f"{source.path}: tensor {name!r} has shape {list(have)}, the {cfg.family} config needs "
                              f"{list(expected[target])}{slot}; check the config (--config) or the layout")
    return plan


def load_weights(model, source: TensorSource, cfg: ModelConfig, device="cpu", dtype=None):
    """Fill a meta-device reference model from ``source`` strictly, one tensor at a time."""
    import torch

    plan = plan_names(source, cfg)
    aliases = source.aliases()
    cache: dict[str, object] = {}
    state = {}
    for target, name in plan.items():
        kept = aliases.get(name, name)
        if kept not in cache:
            t = source.read(kept)
            if t.is_floating_point() and dtype is not None:
                t = t.to(dtype)
            cache[kept] = t.to(device)
        state[target] = cache[kept]
    tied = _tied_names(cfg)
    for out_name, in_name in tied.items():
        if state[out_name] is not state[in_name] and not torch.equal(state[out_name], state[in_name]):
            raise LayoutError(f"{source.path}: the config ties {out_name} to {in_name} but the file holds different "
                              "values for them; set tie_word_embeddings to false in the config")
    model.load_state_dict(state, strict=True, assign=True)
    for out_name, in_name in tied.items():   # assign=True replaced the shared Parameter: tie it again
        owner, attr = out_name.rsplit(".", 1)
        src_owner, src_attr = in_name.rsplit(".", 1)
        setattr(model.get_submodule(owner), attr, getattr(model.get_submodule(src_owner), src_attr))
    from ._common import Rotary

    for m in model.modules():
        if isinstance(m, Rotary):
            m.inv_freq = torch.empty(0, device=device)
            m.reset()
    return model


def _read_config_file(config) -> dict | None:
    if config is None or isinstance(config, dict):
        return config
    from .sources import read_config_file

    return read_config_file(config)


def model_from_source(source: TensorSource, arch: str | None = None, device="cpu", dtype=None, *, config=None,
                      assume_config: bool = False, input_shape=None, input_dtype=None):
    """A runnable eval-mode model from an open source (see :func:`load_model`)."""
    config = _read_config_file(config)
    torch_dtype = to_torch_dtype(dtype)
    if arch and ":" in arch:
        from .user import load_user_model

        return load_user_model(arch, source, config, device=device, dtype=torch_dtype, input_shape=input_shape,
                               input_dtype=input_dtype)
    cfg, source = _planned(source, arch, config, assume_config)
    model = build_model(cfg)
    load_weights(model, source, cfg, device=device, dtype=torch_dtype)
    model.eval()
    model.modelport_assumed = list(cfg.assumed)
    model.modelport_arch = cfg.family
    return model


def _planned(source: TensorSource, arch: str | None, config: dict | None, assume_config: bool):
    """The family config a reference model of ``source`` is built with, and the source in that family's hub layout:
    guesses refused (unless ``assume_config``), the tensors' names and shapes reconciled with the config. Nothing
    is built and no weight is read."""
    fam = normalize_arch(arch) if arch else None
    if config is not None:
        cfg = config_from_hf(config, fam)
    else:
        cfg = detect.config_for_source(source, fam)
        if cfg is None:
            from .config import known_archs

            raise UnsupportedError(f"{source.path}: cannot tell the architecture from the file; pass --arch "
                                   f"({', '.join(known_archs())} or package.module:factory) and --config")
    if fam is not None and cfg.family != fam:
        raise LayoutError(f"{source.path}: --arch {arch} contradicts the file's config, which is {cfg.family}")
    if not assume_config:
        from .config import refuse_guesses

        refuse_guesses(cfg.to_hf_config(), f"{source.path}: building a {cfg.family} model",
                       recorded="in the model's modelport_assumed" if SPELLING.get() == "api" else "in a note")
    source = _to_hub_layout(source, cfg.family, cfg.to_hf_config())
    from .reconcile import reconcile

    reconcile(source, cfg, config if config is not None else source.config)   # before anything is built
    return cfg, source


def planned_config(path: Path, spec: LoadSpec) -> dict:
    """The Hugging Face config the reference family of the weights at ``path`` would be built with, checked as
    :func:`load_model` checks it, without building the model or reading a weight (see :func:`_planned`)."""
    from ..formats import open as open_source

    source = open_source(Path(path), spec.format)
    try:
        return _planned(source, spec.arch, _read_config_file(spec.config), spec.assume_config)[0].to_hf_config()
    finally:
        source.close()


def _to_hub_layout(source: TensorSource, family: str, config: dict | None) -> TensorSource:
    """The source renamed into its family's HF layout by the layout tables (itself if already there)."""
    from .layouts import detect_layout, hub_of, to_layout

    layout = detect_layout(source)
    if layout is None or layout.id == hub_of(family):
        return source
    return to_layout(source, hub_of(family), source.config if source.config is not None else config)


def load_model(path, arch: str | None = None, device="cpu", dtype=None, *, config=None, assume_config: bool = False,
               options: Options | None = None, input_shape=None, input_dtype=None):
    """A runnable eval-mode model for the checkpoint at ``path``.

    ``arch``: a family id (see :func:`modelport.models.known_archs`) to override detection, or ``package.module:factory`` for
    your own module. ``config``: a config.json path or dict stating the model's hyper-parameters, replacing
    the file's; needed for bare weights, whose shapes do not reveal head counts, norm epsilon, rope theta …:
    without it such a file raises ConfigNeededError listing the values, unless ``assume_config=True`` accepts
    the guesses (listed in ``model.modelport_assumed``). ``dtype``: cast floating weights (float32,
    bfloat16 …); the file's dtype otherwise. ``input_shape`` /
    ``input_dtype``: example inputs of a user module (see :func:`example_inputs`).
    """
    from ..formats import open as open_source

    source = open_source(Path(path), options=options)
    try:
        return model_from_source(source, arch, device, dtype, config=config, assume_config=assume_config,
                                 input_shape=input_shape, input_dtype=input_dtype)
    finally:
        source.close()


def example_inputs(model, batch: int = 1, seq_len: int = 8, seed: int = 0) -> tuple:
    """Inputs to run or trace ``model`` with: token ids (and a full mask) for the reference language
    models; for a user module, random tensors of the ``input_shape`` / ``input_dtype`` it was loaded with."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    device = next(iter(model.parameters()), torch.empty(0)).device
    spec = getattr(model, "modelport_input", None)
    if spec is not None:
        shape, dtype = spec
        return (random_tensor(shape, dtype, gen).to(device),)
    cfg = getattr(model, "config", None)
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is None:
        raise UnsupportedError("no example inputs for this model: give its input shape (--input-shape 1,3,224,224)")
    ids = torch.randint(0, vocab, (batch, seq_len), generator=gen).to(device)
    return ids, torch.ones_like(ids)


def make_weights(path: Path, spec: LoadSpec):
    """The runnable of a weights checkpoint: a reference family (detected, or ``spec.arch``) or your own
    module (``spec.arch`` = ``package.module:factory``)."""
    from .runners import from_module
    from .spec import CAUSAL_LM, TENSOR, InputSpec

    if spec.engine == "transformers":
        raise UnsupportedError(f"{path}: --engine transformers runs Hugging Face directories; this is {spec.format!r}")
    model = load_model(path, spec.arch, spec.device, spec.dtype, config=spec.config, assume_config=spec.assume_config,
                       input_shape=spec.input_shape, input_dtype=spec.input_dtype)
    assumed = list(getattr(model, "modelport_assumed", []))
    if spec.user_module:
        shape_dtype = getattr(model, "modelport_input", None)
        given = None
        if shape_dtype is not None:
            given = InputSpec("input", dtypes.canonical(shape_dtype[1]), tuple(shape_dtype[0]))
        return from_module(model, kind=TENSOR, origin=f"user module {spec.arch} ({type(model).__name__})", path=path,
                           input_spec=given, assumed=assumed, made_by="user")
    family = getattr(model, "modelport_arch", None) or spec.arch
    return from_module(model, kind=CAUSAL_LM, origin=f"modelport reference {family} ({type(model).__name__})",
                       path=path, vocab_size=model.config.vocab_size, assumed=assumed, made_by="reference")
