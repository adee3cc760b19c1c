import torch
from safetensors.torch import save_file

import modelport
from modelport.inspect import TensorRow, module_tree


def test_module_tree_counts_parameters_per_prefix():
    rows = [TensorRow("h.0.attn.w", [4, 3], "float32", 48), TensorRow("h.0.attn.b", [4], "float32", 16),
            TensorRow("h.1.mlp.w", [2, 5], "float16", 20), TensorRow("ln.w", [7], "float32", 28)]
    tree = {m.name: m for m in module_tree(rows)}
    assert tree[""].params == 12 + 4 + 10 + 7
    assert tree["h"].params == 26 and tree["h.0"].params == 16 and tree["h.0.attn"].tensors == 2
    assert tree["h.1.mlp"].bytes == 20 and tree["ln"].params == 7
    assert tree["h.0.attn"].depth == 3


def test_inspect_reports_totals_aliases_and_metadata(tmp_path):
    model = torch.nn.Module()
    model.emb = torch.nn.Embedding(37, 24)
    model.head = torch.nn.Linear(24, 37, bias=False)
    model.head.weight = model.emb.weight
    from safetensors.torch import save_model

    save_model(model, tmp_path / "m.safetensors", metadata={"note": "x"})
    s = modelport.inspect(tmp_path / "m.safetensors")
    assert s.format == "safetensors"
    assert s.total_params == 37 * 24 and s.total_bytes == 37 * 24 * 4
    tied = [t for t in s.tensors if t.alias_of]
    assert len(tied) == 1 and tied[0].bytes == 0
    assert s.metadata["note"] == "x"
    assert s.dtypes == {"float32": 37 * 24}


def test_inspect_of_empty_and_scalar_tensors(tmp_path):
    save_file({"s": torch.tensor(1.5), "e": torch.empty(0, 3)}, tmp_path / "x.safetensors")
    s = modelport.inspect(tmp_path / "x.safetensors")
    assert s.total_params == 1 and {t.name: t.shape for t in s.tensors} == {"s": [], "e": [0, 3]}


def test_lua_model_parameters_counted_apart_from_buffers():
    from pathlib import Path

    from modelport.inspect import inspect
    from modelport.t7.nn import load_lua_model

    path = Path(__file__).resolve().parents[1] / "fixtures" / "t7nn" / "deeplearning_hw1_model.t7"
    summary = inspect(path)
    model = load_lua_model(path)
    assert summary.total_params == sum(p.numel() for p in model.parameters()) == 59850
    assert summary.total_buffers == 463435
    assert {t.name.rsplit(".", 1)[-1] for t in summary.tensors if t.buffer} >= {"output", "gradInput"}


def test_layers_are_listed_in_numeric_order_and_named_parts_keep_the_file_order(tmp_path):
    """safetensors stores names sorted as text (layers.0, layers.1, layers.10 …); inspect lists 0, 1, 2 … 11."""
    import torch
    from safetensors.torch import save_file

    from modelport.inspect import inspect as run

    tensors = {f"model.layers.{i}.mlp.weight": torch.zeros(2) for i in range(12)}
    tensors.update({"model.embed_tokens.weight": torch.zeros(3), "model.norm.weight": torch.zeros(2)})
    save_file(tensors, tmp_path / "m.safetensors")
    names = [r.name for r in run(tmp_path / "m.safetensors").tensors]
    assert names == ["model.embed_tokens.weight", *(f"model.layers.{i}.mlp.weight" for i in range(12)),
                     "model.norm.weight"]
    tree = [m.name for m in run(tmp_path / "m.safetensors").modules if m.name.startswith("model.layers.")]
    assert tree == [f"model.layers.{i}" for i in range(12)]
