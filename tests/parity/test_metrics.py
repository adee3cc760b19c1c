"""Evidence objects: numbers that say how far apart two outputs are and what would have passed."""

from __future__ import annotations

import json
import math

import torch

from modelport.parity.metrics import (compare_generation, compare_tensors, least_precise, near_tie, token_agreement,
                                      tolerance)


def _logits(seed=0, shape=(2, 5, 11)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)) * 8


def test_one_logit_moved_by_1e_3_fails_the_fp32_defaults():
    ref = _logits()
    cand = ref.clone()
    cand[1, 3, 7] += 1e-3
    c = compare_tensors(ref, cand, tolerance("float32"), output="logits", inputs="x")
    assert not c and c.worst == [1, 3, 7]
    assert math.isclose(c.max_abs, 1e-3, rel_tol=1e-3)
    assert c.required_atol > tolerance("float32").atol
    assert compare_tensors(ref, cand, tolerance("float32", atol=2e-3), output="logits", inputs="x")


def test_rounding_noise_passes_and_smallest_tolerance_is_exact():
    ref = _logits()
    cand = ref + 1e-6 * torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    tol = tolerance("float32")
    c = compare_tensors(ref, cand, tol, output="logits", inputs="x")
    assert c and c.cosine > 0.999999 and c.positions == ref.numel()
    again = compare_tensors(ref, cand, tolerance("float32", atol=c.required_atol * 1.0001, rtol=tol.rtol),
                            output="logits", inputs="x")
    tighter = compare_tensors(ref, cand, tolerance("float32", atol=c.required_atol * 0.9, rtol=tol.rtol),
                              output="logits", inputs="x")
    assert again and not tighter
    json.dumps(c.to_json())


def test_padding_is_not_compared():
    ref = _logits()
    cand = ref.clone()
    cand[1, :2] += 100.0                        # garbage at padded positions
    mask = torch.ones(2, 5, dtype=torch.long)
    mask[1, :2] = 0
    c = compare_tensors(ref, cand, tolerance("float32"), output="logits", inputs="x", mask=mask)
    assert c and c.positions == 8 * 11
    assert not compare_tensors(ref, cand, tolerance("float32"), output="logits", inputs="x")


def test_nan_or_inf_in_the_candidate_fails():
    ref = _logits()
    for bad in (float("nan"), float("inf")):
        cand = ref.clone()
        cand[0, 0, 0] = bad
        c = compare_tensors(ref, cand, tolerance("float32", atol=1e9), output="logits", inputs="x")
        assert not c and c.nonfinite == 1 and c.max_abs is None


def test_a_tensor_of_many_pieces_is_measured_as_one():
    """Large outputs are compared a piece at a time in float64: the figures equal those of the whole tensor at once
    (padding and the reference's own NaN left out, the first largest error's index in the whole tensor)."""
    ref = _logits(3, (2, 9, 70001))                   # over two pieces of _CHUNK elements
    cand = ref + torch.randn(ref.shape, generator=torch.Generator().manual_seed(4)) * 1e-6
    ref[0, 2, 5] = float("nan")
    cand[1, 8, 70000] += 0.5                          # in the last piece
    cand[0, 0, 0] -= 0.5                              # as large, but padding
    mask = torch.ones(2, 9, dtype=torch.long)
    mask[0, 0] = 0
    tol = tolerance("float32")
    c = compare_tensors(ref, cand, tol, output="logits", inputs="x", mask=mask)
    keep = mask.bool()[..., None].expand(ref.shape) & torch.isfinite(ref)
    a, b = ref.double()[keep], cand.double()[keep]
    err = (a - b).abs()
    assert c.positions == a.numel() and c.worst == [1, 8, 70000] and not c
    assert c.max_abs == float(err.max()) and math.isclose(c.mean_abs, float(err.mean()), rel_tol=1e-12)
    assert math.isclose(c.cosine, float((a * b).sum() / (a.norm() * b.norm())), rel_tol=1e-12)
    assert math.isclose(c.required_atol, float((err - tol.rtol * a.abs()).clamp(min=0).max()), rel_tol=1e-12)


def test_token_agreement_over_many_pieces_counts_every_position():
    ref = _logits(5, (3, 40, 50000))                  # about 10 positions a piece
    cand = ref.clone()
    cand[2, 39, 7] = ref[2, 39].max() + 1             # a flip at the very last position
    cand[0, 1] = ref[0, 1] * 0.5                      # same argmax, a different distribution
    mask = torch.ones(3, 40, dtype=torch.long)
    mask[1, :10] = 0
    t = token_agreement(ref, cand, tolerance("float32"), inputs="x", mask=mask)
    assert t.positions == 110 and t.top1_disagreements == 1 and t.top1 == 109 / 110 and not t
    p = torch.log_softmax(ref.double()[0, 1], -1)
    q = torch.log_softmax(cand.double()[0, 1], -1)
    assert t.kl_max >= float((p.exp() * (p - q)).sum()) > 0


def test_shape_mismatch_is_evidence_not_a_crash():
    c = compare_tensors(_logits(), _logits(shape=(2, 5, 12)), tolerance("float32"), output="logits", inputs="x")
    assert not c and "shape" in c.problem


def test_dtype_defaults():
    assert least_precise("float32", "float16") == "float16"
    assert least_precise("float32", "float32") == "float32"
    assert tolerance("float16").atol > tolerance("float32").atol
    t = tolerance("float32", rtol=0.0)
    assert t.given and t.atol == tolerance("float32").atol and "given" in t.describe()


def test_token_agreement_counts_flips_and_ties():
    ref = torch.zeros(1, 3, 6)
    ref[0, 0, 2] = 5.0                          # clear winner
    ref[0, 1, 1] = ref[0, 1, 4] = 3.0           # exact tie
    ref[0, 2, 0] = 1.0
    cand = ref.clone()
    cand[0, 1, 4] += 1e-6                        # tie flips: allowed
    ok = token_agreement(ref, cand, tolerance("float32"), inputs="x")
    assert ok and ok.top1_disagreements == 1 and ok.top1_ties == 1 and ok.kl_mean < 1e-9
    cand[0, 0, 3] = 6.0                          # a real flip
    bad = token_agreement(ref, cand, tolerance("float32"), inputs="x")
    assert not bad and bad.top1 < 1 and bad.kl_max > 0.1 and bad.top5_overlap == 1.0
    assert near_tie(ref[0, 1], tolerance("float32")) and not near_tie(ref[0, 0], tolerance("float32"))


def test_generation_reports_the_first_differing_token():
    steps = [torch.tensor([[0.0, 9.0, 1.0], [5.0, 0.0, 1.0]])] * 4
    ref = torch.tensor([[1, 1, 1, 1], [0, 0, 0, 0]])
    cand = torch.tensor([[1, 1, 1, 1], [0, 0, 2, 0]])
    g = compare_generation((ref, steps), (cand, steps), tolerance("float32"), inputs="x")
    assert not g and (g.first_difference, g.row) == (2, 1)
    assert compare_generation((ref, steps), (ref.clone(), steps), tolerance("float32"), inputs="x")
