"""coverage: every token id's input-embedding row, here of an ONNX candidate whose embedding onnxruntime reads
from the model file itself (the graph is cut without holding the weights)."""

from __future__ import annotations

import pytest

from modelport.parity import coverage

from . import faults

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The reference directory, and ONNX exports of it and of a copy with two embedding rows zeroed."""
    from ..conftest import run_cli_in_process

    root = tmp_path_factory.mktemp("cov")
    state, config = faults.llama_state(seed=41)
    ref = faults.write_dir(root / "ref", state, config)
    bad = faults.write_dir(root / "rows", faults.embedding_rows_zeroed(state, [5, 30]), config)
    for src, dst in ((ref, root / "good.onnx"), (bad, root / "rows.onnx")):
        assert run_cli_in_process("convert", src, dst, "--no-manifest").returncode == 0
    return root, ref


@pytest.mark.parametrize("inline_below", [0, 4096])
def test_every_id_of_an_onnx_candidate_is_looked_up_with_its_weights_left_in_the_file(exported, monkeypatch,
                                                                                       inline_below):
    from modelport.formats import onnx as onnx_format
    from modelport.models.runnable import load_runnable

    tmp_path, ref = exported
    monkeypatch.setattr(onnx_format, "_SESSION_INLINE_BELOW", inline_below)     # 0: the embedding too is read in place
    model = onnx_format.load_for_session(tmp_path / "rows.onnx")
    embedding = next(t for t in model.graph.initializer if t.name.endswith("embed_tokens.weight"))
    assert embedding.data_location == (1 if inline_below == 0 else 0)
    recorded = coverage.reference_rows(load_runnable(ref))
    before = sorted(p.name for p in tmp_path.iterdir())
    got = coverage.check_rows(recorded, load_runnable(tmp_path / "rows.onnx"))
    assert got.first_ids == [5, 30] and got.differing == 2 and not got.passed
    assert coverage.check_rows(recorded, load_runnable(tmp_path / "good.onnx")).passed
    assert sorted(p.name for p in tmp_path.iterdir()) == before                    # nothing written beside


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float64"])
def test_reference_rows_wait_in_a_temporary_file_and_read_back_exactly(dtype):
    import torch

    table = torch.randn(9000, 5, generator=torch.Generator().manual_seed(3)).to(getattr(torch, dtype))
    ids = torch.randperm(9000, generator=torch.Generator().manual_seed(4)).unsqueeze(0)
    asked = []
    spilled = coverage._spill(lambda some: asked.append(some.shape[1]) or table[some], ids)
    assert isinstance(spilled, coverage.SpilledRows) and spilled.shape == (1, 9000, 5)
    assert max(asked) <= coverage._CHUNK and sum(asked) == 9000               # looked up a chunk at a time
    back = torch.cat([coverage._chunk(spilled, at, at + coverage._CHUNK) for at in range(0, 9000, coverage._CHUNK)])
    assert back.dtype == table.dtype and torch.equal(back, table[ids[0]])


def test_rows_read_back_from_the_file_find_a_changed_row():
    import torch

    from modelport.models.runners import TorchRunnable
    from modelport.models.spec import token_inputs

    emb = torch.nn.Embedding(50, 6)
    wrapper = torch.nn.Module()
    wrapper.embed = emb
    ids = torch.arange(50).unsqueeze(0)
    recorded = ("embed", ids, coverage._spill(lambda some: emb(some).detach(), ids))
    with torch.no_grad():
        emb.weight[17] *= 1.001
    cand = TorchRunnable(kind="causal-lm", inputs=token_inputs(), outputs=("logits",), origin="test", module=wrapper,
                         vocab_size=50)
    got = coverage.check_rows(recorded, cand)
    assert got.first_ids == [17] and not got.passed


def test_a_gather_from_a_stored_table_is_read_from_the_file_not_run(exported, monkeypatch):
    """An exporter's embedding is one Gather of the ids from a stored table: its rows are read from the file (no
    second session holding the table), and they are the rows a session on the cut returns."""
    import torch

    from modelport.models.runnable import load_runnable

    tmp_path, _ = exported
    cand = load_runnable(tmp_path / "good.onnx")
    sessions = []
    real = coverage._session_beside
    monkeypatch.setattr(coverage, "_session_beside", lambda *a: sessions.append(a) or real(*a))
    rows_of = coverage.looker(cand, "model.embed_tokens")
    assert rows_of is not None and sessions == []
    ids = torch.tensor([[3, 4, 9, 1, 0, 4]])
    got = rows_of(ids)
    monkeypatch.setattr(coverage, "_stored_table", lambda *a: None)
    ran = coverage.looker(cand, "model.embed_tokens")
    assert len(sessions) == 1
    want = ran(ids)
    assert got.shape == want.shape == (1, 6, want.shape[-1]) and got.dtype == want.dtype and torch.equal(got, want)
    with pytest.raises(IndexError, match="outside the embedding"):
        rows_of(torch.tensor([[10 ** 6]]))
