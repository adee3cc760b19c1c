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
    assert set(worst) == {"far"} and abs(worst["far"] - 0.5) < 1e-6
    assert report.equal == 4 and report.compared == 5     # near within atol, NaNs alike, -0 == 0, cast exactly rounded
    mapped.clear()
    assert modelport.diff(tmp_path / "a.safetensors", tmp_path / "a.safetensors")
    assert mapped == []                                          # equal tensors are read a piece at a time, never mapped
def test_a_tied_alias_and_a_derived_buffer_held_by_one_side_only_are_matched(tmp_path, cli):
    """An export lists lm_head.weight as a tie and keeps the rotary inv_freq buffer; the HF source lists neither."""
    from safetensors.torch import load_file

    from .models import tiny

    tiny.llama(seed=4, tie_word_embeddings=True).save_pretrained(tmp_path / "hf")
    weights = load_file(tmp_path / "hf" / "model.safetensors")
    assert "lm_head.weight" not in weights
    exported = dict(weights, **{"lm_head.weight": weights["model.embed_tokens.weight"],   # one storage: a tie
                                "model.rotary.inv_freq": torch.arange(4.0)})
    torch.save(exported, tmp_path / "export.pt")
    report = modelport.diff(tmp_path / "hf", tmp_path / "export.pt")
    assert report and not report.unexpected and not report.missing, report
    assert sorted(m.split(":")[0] for m in report.matched) == ["lm_head.weight", "model.rotary.inv_freq"]
    r = cli("diff", tmp_path / "hf", tmp_path / "export.pt")
    assert r.returncode == 0 and "matched: lm_head.weight: tied to model.embed_tokens.weight in B" in r.stdout, r
    # a name of no known kind on one side only is still a difference
    torch.save(dict(exported, **{"model.extra.weight": torch.zeros(2)}), tmp_path / "extra.pt")
    report = modelport.diff(tmp_path / "hf", tmp_path / "extra.pt")
    assert not report and report.unexpected == ["model.extra.weight"]


def test_cast_counts_an_exactly_rounded_value_as_equal(tmp_path):
    """A correct --dtype fp16 conversion of values in [2, 4) rounds by up to 0.00098 (fp16 spacing there is
    0.00195): equal under --cast at any atol; one value a step off is a difference."""
    g = torch.Generator().manual_seed(9)
    w = 2 + 2 * torch.rand(64, 8, generator=g)
    save_file({"w": w}, tmp_path / "a.safetensors")
    save_file({"w": w.half()}, tmp_path / "h.safetensors")
    assert (w.half().float() - w).abs().max() > 5e-4
    report = modelport.diff(tmp_path / "a.safetensors", tmp_path / "h.safetensors", cast=True)
    assert report and report.equal == 1
    off = w.half()
    off[3, 2] = torch.nextafter(off[3, 2], torch.tensor(10.0, dtype=torch.float16))
    save_file({"w": off}, tmp_path / "off.safetensors")
    report = modelport.diff(tmp_path / "a.safetensors", tmp_path / "off.safetensors", cast=True)
    assert not report and report.differences[0].max_abs_diff > 1e-3
    assert modelport.diff(tmp_path / "a.safetensors", tmp_path / "off.safetensors", cast=True, atol=4e-3)
