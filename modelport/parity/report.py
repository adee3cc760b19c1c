"""The parity report: everything a failure needs to be understood and re-run, as JSON, text or JUnit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .layers import Divergence
from .metrics import Generation, TensorComparison, TokenAgreement, Tolerance


@dataclass
class Check:
    """One gated verdict of one candidate (a JUnit test case)."""

    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict:
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


def _num(x, fmt=".3g") -> str:
    return "-" if x is None else format(x, fmt)


@dataclass
class CandidateResult:
    model: dict                              # Runnable.describe() plus providers
    tolerance: Tolerance
    comparisons: list[TensorComparison] = field(default_factory=list)
    tokens: list[TokenAgreement] = field(default_factory=list)
    generation: Generation | None = None
    first_divergence: Divergence | None = None
    divergence_note: str | None = None       # why no layer was named
    coverage: Any = None                     # coverage.Coverage: every id's input-embedding row
    seconds: dict[str, float] = field(default_factory=dict)

    def checks(self) -> list[Check]:
        out = []
        for name in dict.fromkeys(c.output for c in self.comparisons):
            cs = [c for c in self.comparisons if c.output == name]
            bad = [c for c in cs if not c.passed]
            worst = max((c.max_abs for c in cs if c.max_abs is not None), default=None)
            need = max((c.required_atol for c in cs if c.required_atol is not None), default=None)
            floor = next((c.floor for c in cs if c.floor is not None), None)
            if floor is not None and not any(c.problem for c in bad):
                allowed = cs[0].allowed
                floors = "-" if worst is None or not floor else f"{worst / floor:.3g}"
                margin = "-" if worst is None else "inf" if worst == 0 else f"{allowed / worst:.3g}"
                where = f"; worst at {bad[0].inputs}" if bad else ""
                detail = (f"max abs {_num(worst)} against the float64 reference = {floors} x the floor {_num(floor)}; "
                          f"allowed {_num(allowed)} ({self.tolerance.factor:g} x floor), margin {margin}x{where}")
            elif bad:
                c = bad[0]
                detail = c.problem or (f"{c.inputs}: max abs {_num(c.max_abs)} at {c.worst}, needs atol "
                                       f"{_num(c.required_atol)} at rtol {self.tolerance.rtol:g}")
            else:
                detail = f"max abs {_num(worst)} over {len(cs)} input sets (would pass down to atol {_num(need)})"
            out.append(Check(f"{name} within tolerance", not bad, detail))
        if self.coverage is not None:
            cov = self.coverage
            out.append(Check("embedding of every token id", cov.passed,
                             f"all {cov.ids} rows of {cov.module} match" if cov.passed else
                             f"{cov.differing} of {cov.ids} rows of {cov.module} differ (ids {cov.first_ids}"
                             f"{' …' if cov.differing > len(cov.first_ids) else ''}; max abs {_num(cov.max_abs)})"))
        nonfinite = sum(c.nonfinite for c in self.comparisons)
        out.append(Check("finite", nonfinite == 0, f"{nonfinite} NaN/Inf values where the reference is finite"
                         if nonfinite else "no NaN or Inf"))
        if self.tokens:
            bad_t = [t for t in self.tokens if not t.passed]
            n = sum(t.positions for t in self.tokens)
            differ = sum(t.top1_disagreements - t.top1_ties for t in self.tokens)
            out.append(Check("top-1 agreement", not bad_t, f"{differ} of {n} next tokens differ (not counting near-ties)"))
        if self.generation is not None:
            g = self.generation
            if g.first_difference is None:
                detail = f"all {g.new_tokens} greedy tokens equal"
            else:
                detail = (f"first differing token at index {g.first_difference} (row {g.row})"
                          + (", where the reference's top two logits tie within tolerance" if g.at_tie else ""))
            out.append(Check(f"greedy generation of {g.new_tokens} tokens", g.passed, detail))
        return out

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks())

    def to_json(self) -> dict:
        return {"model": self.model, "passed": self.passed,
                "tolerance": self.tolerance.to_json(),
                "checks": [c.to_json() for c in self.checks()],
                "outputs": [c.to_json() for c in self.comparisons],
                "tokens": [t.to_json() for t in self.tokens],
                "generation": self.generation.to_json() if self.generation else None,
                "first_divergence": self.first_divergence.to_json() if self.first_divergence else None,
                "divergence_note": self.divergence_note, "seconds": self.seconds,
                "coverage": self.coverage.to_json() if self.coverage is not None else None}


@dataclass
class ParityReport:
    """The verdict on every candidate against one reference; true when all pass."""

    reference: dict
    candidates: list[CandidateResult]
    device: str                               # what was asked: auto | cpu | cuda
    torch_device: str                         # where torch really ran
    seed: int
    inputs: list[dict]
    new_tokens: int
    peak_gpu_bytes: int | None = None
    reference_seconds: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.passed

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.candidates)

    def providers(self) -> list[str]:
        seen = []
        for m in [self.reference] + [c.model for c in self.candidates]:
            for p in m.get("providers") or []:
                if p not in seen:
                    seen.append(p)
        return seen

    def to_json(self) -> dict:
        return {"passed": self.passed, "device": self.device, "torch_device": self.torch_device,
                "onnxruntime_providers": self.providers(), "seed": self.seed, "new_tokens": self.new_tokens,
                "inputs": self.inputs, "reference": self.reference, "reference_seconds": self.reference_seconds,
                "peak_gpu_bytes": self.peak_gpu_bytes, "candidates": [c.to_json() for c in self.candidates]}

    def to_text(self) -> str:
        lines = [f"reference: {_who(self.reference)}",
                 f"device: {self.device} -> torch on {self.torch_device}"
                 + (f"; onnxruntime providers that ran: {', '.join(self.providers())}" if self.providers() else ""),
                 f"seed {self.seed}; inputs: " + "; ".join(i["label"] for i in self.inputs)
                 + (f"; greedy generation of {self.new_tokens} tokens" if self.new_tokens else "")]
        if self.peak_gpu_bytes is not None:
            lines.append(f"peak GPU memory: {self.peak_gpu_bytes / 2**20:.1f} MiB")
        for c in self.candidates:
            lines += ["", f"candidate: {_who(c.model)}"]
            if c.model.get("config_from"):
                lines.append(f"config: {c.model['config_from']}")
            lines += [f"tolerance: {c.tolerance.describe()}",
                      f"  {'output / inputs':<44} {'positions':>9} {'max abs':>9} {'mean abs':>9} {'max rel':>9} "
                      f"{'cosine':>9} {'need atol':>9}  ok"]
            for t in c.comparisons:
                what = f"{t.output} / {t.inputs}"
                if t.problem:
                    lines.append(f"  {what[:44]:<44} {t.problem}  FAIL")
                    continue
                cos = "-" if t.cosine is None else f"{t.cosine:.6f}"
                lines.append(f"  {what[:44]:<44} {t.positions:>9} {_num(t.max_abs):>9} {_num(t.mean_abs):>9} "
                             f"{_num(t.max_rel):>9} {cos:>9} {_num(t.required_atol):>9}  "
                             f"{'ok' if t.passed else 'FAIL'}" + (f" ({t.nonfinite} NaN/Inf)" if t.nonfinite else ""))
            for t in c.tokens:
                lines.append(f"  tokens / {t.inputs}: top-1 {t.top1:.1%} ({t.top1_disagreements} differ, {t.top1_ties} "
                             f"at near-ties), top-5 overlap {t.top5_overlap:.1%}, KL mean {_num(t.kl_mean)} "
                             f"max {_num(t.kl_max)} nats")
            for check in c.checks():
                lines.append(f"  [{'pass' if check.passed else 'FAIL'}] {check.name}: {check.detail}")
            if c.first_divergence is not None:
                lines.append(f"  {c.first_divergence.describe()}")
            elif c.divergence_note:
                lines.append(f"  first divergence not located: {c.divergence_note}")
            lines.append(f"  verdict: {'PASS' if c.passed else 'FAIL'}")
        lines += ["", f"parity: {'PASS' if self.passed else 'FAIL'} ({sum(c.passed for c in self.candidates)} of "
                      f"{len(self.candidates)} candidates pass)"]
        return "\n".join(lines)

    def to_junit(self) -> str:
        """JUnit XML: one test suite per candidate, one test case per gated check."""
        from xml.etree import ElementTree as ET

        suites = ET.Element("testsuites", name="modelport parity")
        for i, c in enumerate(self.candidates):
            checks = c.checks()
            suite = ET.SubElement(suites, "testsuite", name=f"parity: {_who(c.model)}", tests=str(len(checks)),
                                  failures=str(sum(not k.passed for k in checks)), errors="0")
            props = ET.SubElement(suite, "properties")
            for k, v in (("reference", _who(self.reference)), ("device", self.torch_device), ("seed", self.seed),
                         ("atol", c.tolerance.atol), ("rtol", c.tolerance.rtol)):
                ET.SubElement(props, "property", name=k, value=str(v))
            for k in checks:
                case = ET.SubElement(suite, "testcase", classname=f"parity.candidate{i}", name=k.name)
                if not k.passed:
                    fail = ET.SubElement(case, "failure", message=k.detail)
                    fail.text = c.first_divergence.describe() if c.first_divergence else k.detail
                else:
                    ET.SubElement(case, "system-out").text = k.detail
        return ET.tostring(suites, encoding="unicode", xml_declaration=True)


def _who(model: dict[str, Any]) -> str:
    where = f" [{model['path']}]" if model.get("path") else ""
    prov = f", providers {', '.join(model['providers'])}" if model.get("providers") else ""
    return f"{model['origin']} ({model['backend']} on {model['device']}{prov}){where}"
