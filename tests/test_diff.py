import torch
from safetensors.torch import save_file

import modelport
from modelport.diff import compare_tensors


def test_compare_tensors_nan_inf_and_ints():
    nan = float("nan")
    assert compare_tensors(torch.tensor([nan, float("inf"), 1.0]), torch.tensor([nan, float("inf"), 1.0]), 0)[0]
    ok, worst = compare_tensors(torch.tensor([nan]), torch.tensor([1.0]), 1e9)
    assert not ok and worst == float("inf")
    assert compare_tensors(torch.tensor([2**62]), torch.tensor([2**62 + 1]), 0) == (False, 1.0)


def test_missing_unexpected_shape_dtype_and_value_differences(tmp_path):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(3, 4, generator=g)
    save_file({k: w.clone() for k in ("same", "only_a", "shape", "dtype", "vals")}, tmp_path / "a.safetensors")
    save_file({"same": w.clone(), "only_b": w.clone(), "shape": w.reshape(4, 3).contiguous(), "dtype": w.half(), "vals": w + 1e-3},
              tmp_path / "b.safetensors")
    report = modelport.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert not report
    assert report.missing == ["only_a"] and report.unexpected == ["only_b"]
    kinds = {d.name: d for d in report.differences}
    assert kinds["shape"].kind == "shape" and kinds["dtype"].kind == "dtype"
    assert abs(kinds["vals"].max_abs_diff - 1e-3) < 1e-6
    assert report.equal == 1 and report.compared == 4
    assert modelport.diff(tmp_path / "a.safetensors", tmp_path / "a.safetensors")


def test_diff_across_layouts_says_how_b_was_mapped(tmp_path):
    import pathlib

    example = pathlib.Path(__file__).resolve().parents[1] / "examples" / "tiny-gpt2.pt"
    modelport.convert(example, tmp_path / "nano.pt", options=modelport.Options(layout="gpt2-nanogpt"))
    report = modelport.diff(example, tmp_path / "nano.pt")
    assert report and report.notes == ["B is in layout gpt2-nanogpt; compared after mapping it to A's layout gpt2-hf"]


def test_tensors_are_compared_piece_by_piece_from_the_file(tmp_path, monkeypatch):
    import importlib
    import mmap

    diff_module = importlib.import_module("modelport.diff")     # modelport.diff is the function

    g = torch.Generator().manual_seed(3)
    w = torch.randn(5, 9, generator=g)                      # 45 elements: pieces of 7, the last of 3
    far, near, nan = w.clone(), w.clone(), w.clone()
    far[4, 8] += 0.5                                        # in the last, short piece
    near[0, 0] -= 1e-4                                      # in the first
    nan[2, 3] = nan[2, 4] = float("nan")
    save_file({"far": w, "near": w.clone(), "nan": nan, "zero": -torch.zeros(3), "cast": w.clone()},
              tmp_path / "a.safetensors")
    save_file({"far": far, "near": near, "nan": nan, "zero": torch.zeros(3), "cast": w.half()},
              tmp_path / "b.safetensors")
    monkeypatch.setattr(diff_module, "PIECE", 7)
    mapped = []
    real_mmap = mmap.mmap
    monkeypatch.setattr(mmap, "mmap", lambda *a, **k: mapped.append(a) or real_mmap(*a, **k))
    report = modelport.diff(tmp_path / "a.safetensors", tmp_path / "b.safetensors", atol=2e-4, cast=True)
    worst = {d.name: d.max_abs_diff for d in report.differences}
    assert set(worst) == {"far", "cast"} and abs(worst["far"] - 0.5) < 1e-6
    assert worst["cast"] == (w - w.half().double()).abs().max().item()
    assert report.equal == 3 and report.compared == 5           # near within atol, NaNs alike, -0 == 0
    mapped.clear()
    assert modelport.diff(tmp_path / "a.safetensors", tmp_path / "a.safetensors")
    assert mapped == []                                          # equal tensors are read a piece at a time, never mapped
