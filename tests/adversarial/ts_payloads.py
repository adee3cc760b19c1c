"""Hostile TorchScript archives, built with torch.jit.script from source written here.

Each archive holds a real program whose ``__setstate__`` (run by ``torch.jit.load``) or ``forward``
does something to ``target``: overwrites its first bytes with ``A``, reads it into a weight, spins, or
a submodule does it. Reading such an archive (inspect, diff, convert of its weights) must never run
that code; running it must be refused unless trusted. Needs torch (the soak builds its seeds once).
"""

from __future__ import annotations

import importlib.util
import itertools
import textwrap
import warnings
from pathlib import Path

TEMPLATE = '''
import torch
from typing import Dict, Tuple


class Payload(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.weight = torch.nn.Parameter(torch.randn(2, 4, generator=g))
        self.junk = torch.zeros(8, dtype=torch.uint8)

    def forward(self, x):
        return torch.nn.functional.linear(x, self.weight) + self.junk.float().sum() * 0{FORWARD}
{HOOKS}


class Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = Payload()
        self.register_buffer("scale", torch.tensor([2.0, 3.0]))

    def forward(self, x):
        return self.inner(x) * self.scale
'''

DICT_HOOKS = '''
    @torch.jit.export
    def __getstate__(self) -> Dict[str, torch.Tensor]:
        return {{"weight": self.weight, "junk": self.junk}}

    @torch.jit.export
    def __setstate__(self, state: Dict[str, torch.Tensor]) -> None:
        self.weight = state["weight"]
        self.junk = state["junk"]
        self.training = False
{ACTION}
'''

TUPLE_HOOKS = '''
    @torch.jit.export
    def __getstate__(self) -> Tuple[torch.Tensor, torch.Tensor]:
        return (self.weight, self.junk)

    @torch.jit.export
    def __setstate__(self, state: Tuple[torch.Tensor, torch.Tensor]) -> None:
        self.weight = state[0]
        self.junk = state[1]
        self.training = False
{ACTION}
'''

ACTIONS = {
    # torch.from_file with shared=True maps the file: writing the tensor writes the file
    "overwrite": "self.junk = torch.from_file({target!r}, True, 8, dtype=torch.uint8).fill_(65)",
    # the file's first 32 bytes become the weight a conversion would write out
    "exfiltrate": "self.weight = torch.from_file({target!r}, False, 8, dtype=torch.float32).reshape(2, 4)",
    "spin": "i = 0\nwhile i >= 0:\n    i += 1\nself.junk = torch.zeros(8, dtype=torch.uint8) + i",
}
KINDS = ("overwrite", "exfiltrate", "spin", "overwrite-tuple", "overwrite-nested", "forward-reads-file")
_count = itertools.count()


def _indent(code: str, n: int) -> str:
    return textwrap.indent(code, " " * n)


def source(kind: str, target: Path) -> str:
    """The Python source of the payload module for ``kind`` (one of KINDS)."""
    forward, hooks = "", ""
    if kind == "forward-reads-file":
        forward = f" + torch.from_file({str(target)!r}, False, 1, dtype=torch.float32).sum() * 0"
    else:
        action = ACTIONS[kind.split("-")[0]].format(target=str(target))
        hooks = (TUPLE_HOOKS if kind.endswith("-tuple") else DICT_HOOKS).format(ACTION=_indent(action, 8))
    return TEMPLATE.replace("{FORWARD}", forward).replace("{HOOKS}", hooks)


def write(path: Path, kind: str, target: Path) -> Path:
    """A TorchScript archive at ``path`` whose code acts on ``target`` when loaded (or run)."""
    import torch

    path = Path(path)
    module_file = path.parent / f"_ts_payload_{next(_count)}_{kind.replace('-', '_')}.py"
    module_file.write_text(source(kind, target))
    spec = importlib.util.spec_from_file_location(module_file.stem, module_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    model = mod.Outer() if kind.endswith("-nested") else mod.Payload()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model.eval()), str(path))
    module_file.unlink()
    return path


def expected_weights(kind: str) -> dict:
    """The tensors a reader must report (as pickled, never as the payload would set them)."""
    import torch

    g = torch.Generator().manual_seed(5)
    weight = torch.randn(2, 4, generator=g)
    if kind.endswith("-nested"):
        return {"scale": torch.tensor([2.0, 3.0]), "inner.weight": weight}
    return {"weight": weight}
