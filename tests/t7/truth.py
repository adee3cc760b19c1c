"""Compare what modelport reads from a fixture with what real Lua Torch7 loaded (``*.lua-truth.json``).

The truth files number objects depth-first; a ``{"t": "ref", "id": n}`` node must be the very
same Python object as the one first seen under id ``n``, so sharing and cycles are checked too.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from modelport.t7.objects import LuaFunction, LuaObject, LuaTable, T7Storage, T7Tensor

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "t7"
_FLOAT32 = ("Float", "Half", "Cuda")


def fixture_files() -> list[Path]:
    """Every fixture that has a truth file (binary and ASCII)."""
    return sorted(p for p in FIXTURES.rglob("*") if p.is_file() and not p.name.endswith((".json", ".md"))
                  and Path(str(p) + ".lua-truth.json").exists())


def load_truth(path: Path) -> dict:
    return json.loads(Path(str(path) + ".lua-truth.json").read_text())


def _num(x) -> float:
    return float(x) if not isinstance(x, str) else float(x.replace("-nan", "nan"))


def _same_number(got: float, want, single: bool, where: str) -> None:
    want = _num(want)
    if single:
        got, want = float(np.float32(got)), float(np.float32(want))
    if math.isnan(want):
        assert math.isnan(got), where
    else:
        assert got == want, f"{where}: {got!r} != {want!r}"


class TruthChecker:
    def __init__(self):
        self.ids: dict[int, object] = {}
        self.tensors = 0
        self.refs = 0

    def check(self, node: dict, value, where: str = "root") -> None:
        t = node["t"]
        if t == "ref":
            self.refs += 1
            assert value is self.ids[node["id"]], f"{where}: not the shared object #{node['id']}"
            return
        if "id" in node:
            assert node["id"] not in self.ids, f"{where}: id {node['id']} seen twice"
            self.ids[node["id"]] = value
        if t == "number":
            assert isinstance(value, float), f"{where}: {value!r} is not a Lua number"
            _same_number(value, node["v"], False, where)
        elif t == "string":
            assert value == node["v"].encode() and len(value) == node["len"], where
        elif t == "boolean":
            assert value is node["v"], where
        elif t == "table":
            assert isinstance(value, LuaTable), f"{where}: {type(value).__name__}"
            self._entries(node, value, where)
        elif t == "object":
            assert isinstance(value, LuaObject) and value.class_name == node["class"], where
            version = 0 if value.version is None else value.version    # Lua: unversioned legacy is 0
            assert version == node["version"], f"{where}: version {value.version} != {node['version']}"
            self._entries(node, value.fields, where)
        elif t == "function":
            assert isinstance(value, LuaFunction) and len(value.bytecode) == node["bytecode_len"], where
        elif t == "tensor":
            self.tensors += 1
            assert isinstance(value, T7Tensor) and value.class_name == node["class"], where
            assert len(value.size) == node["dim"], where
            assert list(value.size) == node["size"] and list(value.stride) == node["stride"], where
            if node["dim"]:
                assert value.offset + 1 == node["storageOffset"], where
            if node["storage"] is None:
                assert value.storage is None, where
            else:
                self.check(node["storage"], value.storage, where + ".storage")
            self._stats(node, value.numpy(), where)
        elif t == "storage":
            assert isinstance(value, T7Storage) and value.class_name == node["class"], where
            assert value.size == node["size"], where
            self._stats(node, value.data, where)
        else:
            raise AssertionError(f"{where}: unknown truth node {t}")

    def _entries(self, node: dict, table, where: str) -> None:
        assert isinstance(table, LuaTable), where
        assert len(table) == node["n"] == len(node["entries"]), f"{where}: {len(table)} entries, Lua has {node['n']}"
        compound = [k for k in table if isinstance(k, (LuaTable, LuaObject, T7Tensor, T7Storage, LuaFunction))]
        for knode, vnode in node["entries"]:
            kt = knode["t"]
            if kt == "number":
                key = float(knode["v"])
            elif kt == "string":
                key = knode["v"].encode()
            elif kt == "boolean":
                key = knode["v"]
            elif kt == "ref":
                key = self.ids[knode["id"]]
            else:
                key = compound.pop(0)
                self.check(knode, key, f"{where}[key]")
            assert key in table, f"{where}: key {knode} missing"
            self.check(vnode, table[key], f"{where}.{knode.get('v', knode.get('id'))}")

    def _stats(self, node: dict, arr, where: str) -> None:
        cls = node["class"].split(".")[1]
        single = cls.startswith(_FLOAT32)
        flat = np.asarray(arr).reshape(-1)
        assert flat.size == node["numel"], where
        if not flat.size:
            return
        if flat.dtype.kind in "iu":
            if "sum" in node:
                assert int(flat.astype(np.int64).sum()) == int(node["sum"]) or \
                    math.isclose(float(flat.sum(dtype=np.float64)), _num(node["sum"]), rel_tol=1e-12), where
            assert int(flat.min()) == node["min"] and int(flat.max()) == node["max"], where
            for key, part in (("values", flat), ("first5", flat[:5]), ("last5", flat[-5:])):
                if key in node:
                    assert [int(x) for x in part] == node[key], f"{where}: {key}"
            return
        wide = flat.astype(np.float64)
        nan = np.isnan(wide)
        assert int(nan.sum()) == node.get("nan_count", 0), f"{where}: NaN count"
        finite = wide[~nan]
        if finite.size:
            _same_number(finite.min(), node["min"], single, where + ".min")
            _same_number(finite.max(), node["max"], single, where + ".max")
            total = float(np.sum(finite))
            want = _num(node["sum"])
            if math.isfinite(want) and math.isfinite(total):
                scale = float(np.abs(finite).sum()) or 1.0
                assert abs(total - want) <= 1e-12 * scale + 1e-300, f"{where}: sum {total} != {want}"
            else:
                assert total == want or (math.isnan(total) and math.isnan(want)), f"{where}: sum {total} != {want}"
        for key, part in (("values", wide), ("first5", wide[:5]), ("last5", wide[-5:])):
            if key in node:
                assert len(part) == len(node[key]), f"{where}: {key}"
                for i, (g, w) in enumerate(zip(part, node[key])):
                    _same_number(g, w, single, f"{where}.{key}[{i}]")
