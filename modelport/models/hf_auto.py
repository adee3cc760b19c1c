"""Any Hugging Face directory that transformers can load, whatever its architecture.

transformers builds the model from the directory's ``config.json`` through its Auto classes, with
``attn_implementation="eager"`` (the attention that traces and exports), from local files only and
with ``trust_remote_code=False``: no code from the directory runs. A directory whose configs name custom
code (an ``auto_map`` entry) is refused before transformers reads it (:func:`refuse_custom_code`).
Causal language models are wrapped to take ``(input_ids, attention_mask)`` with positions following the
mask, as ``generate()`` builds them, and to return logits; everything else is an encoder that takes its
tokenizer's inputs and returns its first output (the last hidden state).

:func:`choose_engine` decides, for ``engine="auto"``, whether modelport's reference family or
transformers runs a directory: the reference when the architecture is one of its families,
transformers otherwise.
"""

from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

from ..errors import FormatError, MissingDependencyError, UnsafeContentError, UnsupportedError
from .runners import TorchRunnable
from .spec import CAUSAL_LM, ENCODER, ENGINES, InputSpec, LoadSpec, token_inputs, torch_dtype
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _config(path: Path) -> dict:
    try:
        return json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise FormatError(f"{path / 'config.json'}: cannot read the config ({exc})") from exc


# The configs through which transformers' Auto classes find code in a directory: an ``auto_map`` entry
# (``{"AutoTokenizer": ["tokenization_x.XTokenizer", null]}``) names a module it imports from there.
_CODE_CONFIGS = ("config.json", "tokenizer_config.json", "processor_config.json", "preprocessor_config.json")


def refuse_custom_code(path: Path, what: str) -> None:
    """UnsafeContentError when a config in the directory ``path`` names custom code (``auto_map``, whatever
    its value: transformers treats an empty one as custom code too). Called before transformers reads the
    directory, so a refusal never depends on transformers' own checks or prompts."""
    from ..formats._untrusted import read_json_file

    for name in _CODE_CONFIGS:
        f = Path(path) / name
        if not (f.exists() or f.is_symlink()):
            continue
        data = read_json_file(f, name)
        if isinstance(data, dict) and "auto_map" in data:
            entries = data["auto_map"]
            shown = ", ".join(map(str, entries))[:80] if isinstance(entries, (dict, list)) else type(entries).__name__
            raise UnsafeContentError(f"{f}: names custom code ('auto_map': {shown}); modelport never runs code from "
                                     f"a model directory, so it will not load {what}: remove 'auto_map' from {name} "
                                     "to use transformers' built-in classes")


def choose_engine(path: Path, engine: str, arch: str | None) -> str:
    """``reference`` or ``transformers`` for the HF directory at ``path``."""
    if engine not in ENGINES:
        raise UnsupportedError(f"engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        return engine
    if arch:
        return "reference"
    from ..errors import ModelportError
    from .config import family_of_hf

    try:
        return "reference" if family_of_hf(_config(path), str(path / "config.json")) else "transformers"
    except ModelportError:
        return "transformers"


def _input_names(path: Path, model) -> list[str]:
    """The inputs the directory's tokenizer gives, else what the model's forward takes of the usual three."""
    tok = path / "tokenizer_config.json"
    if tok.is_file():
        try:
            names = json.loads(tok.read_text()).get("model_input_names")
        except ValueError:
            names = None
        if names:
            return list(names)
    import inspect

    params = inspect.signature(model.forward).parameters
    names = ["input_ids", "attention_mask"]
    if "token_type_ids" in params and getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")
    return names


def _wrapper(model, kind: str, names: list[str]):
    import inspect

    import torch

    params = inspect.signature(model.forward).parameters
    takes_positions = "position_ids" in params

    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        @property
        def root(self):
            """The transformers model, whose module names are the checkpoint's (``model.layers.3``)."""
            return self.model

    class CausalLM(Wrapper):
        """``forward(input_ids, attention_mask) -> logits``, positions following the mask."""

        def forward(self, input_ids, attention_mask):
            kw = {"position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0)} if takes_positions else {}
            return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **kw).logits

        def step(self, input_ids, attention_mask, past=None, every: bool = False):
            """One greedy step with the KV cache: the last position's logits (with ``every``, those of every
            position that ran) and the cache to pass next time (``input_ids`` / ``attention_mask`` are the whole
            sequence so far, of which the tokens after the cached ones run)."""
            kw = {"position_ids": (attention_mask.long().cumsum(-1) - 1).clamp(min=0)} if takes_positions else {}
            if past is not None:
                done = int(past.get_seq_length()) if hasattr(past, "get_seq_length") else past[0][0].shape[-2]
                input_ids = input_ids[:, done:]
                kw = {k: v[:, done:] for k, v in kw.items()}
            name = "cache" if "cache" in params else "past_key_values"      # renamed in transformers 5
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True, **{name: past}, **kw)
            logits = out.logits if every else out.logits[:, -1]
            return logits, getattr(out, name, None) if hasattr(out, name) else out.past_key_values

    class Encoder(Wrapper):
        """``forward(*tokenizer inputs) -> last hidden state``."""

        def forward(self, *args):
            out = self.model(**dict(zip(names, args)))
            return out[0]

    return (CausalLM if kind == CAUSAL_LM else Encoder)().eval()


def _known_family(cfg: dict, path: Path) -> bool:
    """Whether a config without ``architectures`` names a causal-LM family modelport knows (by model_type)."""
    from ..errors import ModelportError
    from .config import family_of_hf

    try:
        return family_of_hf(cfg, str(path / "config.json")) is not None
    except ModelportError:
        return False


class _Held(logging.Handler):
    """transformers' log records kept back while it loads: replayed after a load that worked, summed up in
    the one-line error of one that failed (its load report is a multi-line table)."""

    def __init__(self, logger, handlers):
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self._logger, self._handlers = logger, handlers

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def replay(self) -> None:
        for record in self.records:
            for h in self._handlers:
                if record.levelno >= h.level:
                    h.handle(record)


@contextlib.contextmanager
def _held_logs():
    logger = logging.getLogger("transformers")
    saved, propagate = logger.handlers[:], logger.propagate
    held = _Held(logger, saved)
    logger.handlers, logger.propagate = [held], False
    try:
        yield held
    finally:
        logger.handlers, logger.propagate = saved, propagate


def _report_rows(held: _Held) -> str:
    """The rows of transformers' load report that name a problem, as ``key: status detail`` pieces."""
    rows = []
    for record in held.records:
        for line in re.sub(r"\x1b\[[0-9;]*m", "", record.getMessage()).splitlines():
            parts = [p.strip() for p in line.split("|")]
            if len(parts) >= 2 and parts[1] in ("MISMATCH", "MISSING", "UNEXPECTED", "CONVERSION"):
                rows.append(f"{parts[0]}: {' '.join(p for p in parts[1:] if p)}")
    return "; ".join(rows)


def _reconcile(path: Path, cfg: dict) -> None:
    """The directory's config against its weights' names and shapes (see :mod:`.reconcile`)."""
    from .. import formats
    from ..errors import ModelportError
    from .config import config_from_hf
    from .reconcile import reconcile, reconcile_generic

    with formats.open(path, "hf") as source:
        try:
            family_cfg = config_from_hf(cfg, None, str(path / "config.json"))
        except ModelportError:
            family_cfg = None          # an architecture modelport has no record of: the common spellings only
        if family_cfg is not None:
            reconcile(source, family_cfg, cfg)
        reconcile_generic(source, cfg, str(path / "config.json"))


def transformers_runnable(path, *, device: str = "cpu", dtype=None) -> TorchRunnable:
    """The directory's model as transformers builds it (local files only, eager attention)."""
    try:
        import transformers
    except ImportError as exc:
        raise MissingDependencyError(f"{path}: running it with transformers needs the package 'transformers'; "
                                     "pip install 'modelport[hf]'") from exc
    path = Path(path)
    refuse_custom_code(path, "the model with transformers")
    cfg = _config(path)
    if not isinstance(cfg, dict):
        raise FormatError(f"{path / 'config.json'}: expected a JSON object, got {type(cfg).__name__}")
    _reconcile(path, cfg)          # before transformers builds anything the config claims
    archs = list(cfg.get("architectures") or [])
    kind = CAUSAL_LM if any(a.endswith(_CAUSAL_SUFFIXES) for a in archs) or (not archs and _known_family(cfg, path)) \
        else ENCODER
    auto = transformers.AutoModelForCausalLM if kind == CAUSAL_LM else transformers.AutoModel
    kw = {"attn_implementation": "eager", "local_files_only": True}
    if dtype is not None:
        kw["dtype"] = torch_dtype(dtype)
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()       # its loading bar is noise in modelport's output
    try:
        with _held_logs() as held:
            try:
                model = auto.from_pretrained(str(path), trust_remote_code=False, **kw)
            except Exception as exc:  # noqa: BLE001 - whatever transformers raises over the directory is the directory's
                from ..errors import one_line

                report = _report_rows(held)
                raise FormatError(f"{path}: transformers cannot load this directory ({one_line(exc)}"
                                  + (f"; {one_line(RuntimeError(report))[len('RuntimeError: '):]}" if report else "")
                                  + ")") from exc
            held.replay()
    finally:
        if bars:
            transformers.utils.logging.enable_progress_bar()
    model.eval().to(device)
    if kind == CAUSAL_LM:
        names, outputs = ["input_ids", "attention_mask"], ("logits",)
    else:
        names, outputs = _input_names(path, model), ("last_hidden_state",)
    inputs = token_inputs(tuple(names)) if kind == CAUSAL_LM else tuple(
        InputSpec(n, "int64", ("batch", "sequence")) for n in names)
    vocab = getattr(model.config, "vocab_size", None)
    return TorchRunnable(kind=kind, inputs=inputs, outputs=outputs, origin=f"transformers {type(model).__name__}",
                         path=path, device=str(device), vocab_size=vocab, module=_wrapper(model, kind, names),
                         made_by="transformers", prefix="model.")


def make_hf(path: Path, spec: LoadSpec) -> TorchRunnable:
    """A Hugging Face directory: run by transformers or by modelport's reference family (see
    :func:`choose_engine`); a ``config`` or your own module (``arch``) always takes the reference path."""
    if spec.config is None and not spec.user_module and choose_engine(path, spec.engine, spec.arch) == "transformers":
        return transformers_runnable(path, device=spec.device, dtype=spec.dtype)
    from .loader import make_weights

    return make_weights(path, spec)
