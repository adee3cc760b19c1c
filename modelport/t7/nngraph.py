"""nngraph ``nn.gModule`` rebuilt as a PyTorch module that runs the same node graph.

A gModule's nodes are evaluated in the order of its ``forwardnodes`` (a topological order
computed by nngraph). Each node's ``data`` table is shared between the forward and backward
graphs and identifies the node; ``data.mapindex[1..n]`` lists, in order, the ``data`` tables of
the nodes feeding it. As in nngraph's ``runForwardFunction``:

- the input node (``innode``) receives the gModule's inputs (one input, or the list of them);
- a node with a ``selectindex`` passes on element ``selectindex`` of its single (table) input;
- any other node gets its single input, or the list of its inputs when it has several, and
  applies its module (or passes the value on when it has none);
- the output node (``outnode``) collects the outputs: one tensor, or a list in Lua order.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .nn_base import Fields, lua_array, register
from .objects import LuaObject, LuaTable

_INPUT, _SELECT, _APPLY, _PASS = 0, 1, 2, 3


class GModule(nn.Module):
    """A rebuilt nngraph gModule.

    ``forward(x)`` for one input, ``forward(x1, x2, ...)`` or ``forward([x1, x2, ...])`` for
    several (Lua order). Returns one tensor for one output, a list for several.
    """

    def __init__(self, children: list[nn.Module], steps: list[tuple[int, int, list[int], int]],
                 n_inputs: int, output_step: int):
        super().__init__()
        for i, m in enumerate(children):
            self.add_module(str(i), m)
        self._mods = list(children)
        self.steps = steps              # (kind, module index, input step indices, select index)
        self.n_inputs = n_inputs
        self.output_step = output_step
        kind, _, sources, _ = steps[output_step]
        self.n_outputs = len(sources) if kind == _PASS and len(sources) > 1 else 1   # a list of them when several

    def forward(self, *inputs: Any):
        if self.n_inputs != 1 and len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        if len(inputs) != self.n_inputs:
            raise TypeError(f"this gModule takes {self.n_inputs} input(s), got {len(inputs)}")
        values: list[Any] = []
        for kind, mod, sources, select in self.steps:
            if kind == _INPUT:
                args = list(inputs)
            else:
                args = [values[s] for s in sources]
            if kind == _SELECT:
                values.append(args[0][select])
                continue
            x = args[0] if len(args) == 1 else args
            values.append(self._mods[mod](x) if kind == _APPLY else x)
        return values[self.output_step]

    def extra_repr(self) -> str:
        return f"inputs={self.n_inputs}, outputs={self.n_outputs}, nodes={len(self.steps)}"


@register("nn.gModule")
def _gmodule(obj: LuaObject, f: Fields) -> GModule:
    nodes = f.array("forwardnodes")
    if not nodes:
        raise f.error("field 'forwardnodes' is missing or empty")
    datas = [_node_data(f, node, f"forwardnodes[{i}]") for i, node in enumerate(nodes, 1)]
    innode = _node_data(f, f.raw("innode"), "innode") if f.has("innode") else datas[0]
    outnode = _node_data(f, f.raw("outnode"), "outnode") if f.has("outnode") else datas[-1]
    n_inputs = f.int("nInputs") if f.has("nInputs") else _count_inputs(datas, innode)

    step_of: dict[int, int] = {}
    steps: list[tuple[int, int, list[int], int]] = []
    children: list[nn.Module] = []
    child_of: dict[int, int] = {}
    for i, data in enumerate(datas, 1):
        where = f"forwardnodes[{i}].data"
        if id(data) in step_of:
            raise f.error(f"{where} appears twice in forwardnodes")
        sources = []
        if data is not innode:
            for j, parent in enumerate(_array(f, data, "mapindex", where), 1):
                if id(parent) not in step_of:
                    raise f.error(f"{where}.mapindex[{j}] is not computed before this node "
                                  "(forwardnodes is not in topological order)")
                sources.append(step_of[id(parent)])
        select = _get(data, "selectindex")
        module_obj = _get(data, "module")
        if data is innode:
            kind, mod = _INPUT, -1
            if module_obj is not None:
                raise f.error(f"{where}: the input node should not hold a module")
        elif select is not None:
            if len(sources) != 1 or not isinstance(select, (int, float)) or select < 1:
                raise f.error(f"{where}: a split node needs one input and a selectindex >= 1")
            kind, mod = _SELECT, -1
        elif module_obj is not None:
            module = f.ctx.build(module_obj, f"{f.path + '.' if f.path else ''}{where}.module")
            if id(module) not in child_of:
                child_of[id(module)] = len(children)
                children.append(module)
            kind, mod = _APPLY, child_of[id(module)]
        else:
            kind, mod = _PASS, -1
        step_of[id(data)] = len(steps)
        steps.append((kind, mod, sources, int(select) - 1 if select is not None else 0))
    if id(outnode) not in step_of:
        raise f.error("the output node is not among forwardnodes")
    return GModule(children, steps, n_inputs, step_of[id(outnode)])


def _count_inputs(datas: list[LuaTable], innode: LuaTable) -> int:
    """For files without nInputs: several inputs when the input node feeds a split node."""
    for data in datas:
        parents = _get(data, "mapindex")
        split = _get(data, "nSplitOutputs")
        if isinstance(parents, LuaTable) and lua_array(parents) == [innode] and isinstance(split, (int, float)):
            return int(split)
    return 1


def _node_data(f: Fields, node: Any, where: str) -> LuaTable:
    if not (isinstance(node, LuaObject) and node.class_name == "nngraph.Node" and isinstance(node.fields, dict)):
        raise f.error(f"{where} should be an nngraph.Node")
    data = _get(node.fields, "data")
    if not isinstance(data, LuaTable):
        raise f.error(f"{where}.data should be a table")
    return data


def _get(table: dict, name: str) -> Any:
    for key in (name.encode(), name):
        if key in table:
            return table[key]
    return None


def _array(f: Fields, table: LuaTable, name: str, where: str) -> list[LuaTable]:
    value = _get(table, name)
    if value is None:
        return []
    if not isinstance(value, LuaTable):
        raise f.error(f"{where}.{name} should be a table")
    items = lua_array(value)
    for j, item in enumerate(items, 1):
        if not isinstance(item, LuaTable):
            raise f.error(f"{where}.{name}[{j}] should be a node's data table")
    return items
