"""The table a batch produces: one row per job, as text, JSON and JUnit XML."""

from __future__ import annotations

from dataclasses import dataclass, field

# statuses of jobs that need nothing more
OK = {"done", "passed", "skipped", "resumed"}


@dataclass
class BatchReport:
    """Every job's result, in the order of the jobs file; true when every job passed."""

    results: list[dict] = field(default_factory=list)
    runner: str = "local"          # local | ray
    wall: float = 0.0

    def __bool__(self) -> bool:
        return self.exit_code == 0

    @property
    def exit_code(self) -> int:
        """0 every job passed, 1 a parity check failed (and every other job ran), 2 a job could not run."""
        codes = {r.get("exit_code", 2) for r in self.results}
        if any(c not in (0, 1) for c in codes):
            return 2
        return 1 if 1 in codes else 0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def to_json(self) -> dict:
        return {"runner": self.runner, "wall": round(self.wall, 3), "exit_code": self.exit_code,
                "counts": self.counts(), "jobs": self.results}

    def summary(self) -> str:
        counts = ", ".join(f"{n} {s}" for s, n in sorted(self.counts().items()))
        return f"{len(self.results)} jobs ({counts}) in {self.wall:.1f} s on {self.runner}"

    def to_text(self) -> str:
        return "\n".join([*(line(r) for r in self.results), self.summary()])

    def to_junit(self) -> str:
        """One test case per job: a failed parity check is a failure, a job that could not run an error."""
        from xml.etree import ElementTree as ET

        failures = sum(r.get("exit_code") == 1 for r in self.results)
        errors = sum(r.get("exit_code") not in (0, 1) for r in self.results)
        suite = ET.Element("testsuite", name="modelport batch", tests=str(len(self.results)),
                           failures=str(failures), errors=str(errors), skipped=str(self.counts().get("skipped", 0)),
                           time=f"{self.wall:.3f}")
        for r in self.results:
            case = ET.SubElement(suite, "testcase", classname="modelport.batch", name=r["name"],
                                 time=f"{r.get('wall') or 0:.3f}")
            if r.get("exit_code") == 1:
                ET.SubElement(case, "failure", message=r.get("error") or "parity failed").text = _detail(r)
            elif r.get("exit_code") not in (0, None):
                ET.SubElement(case, "error", message=r.get("error") or r["status"]).text = _detail(r)
            elif r["status"] == "skipped":
                ET.SubElement(case, "skipped", message=r.get("error") or "skipped")
            else:
                ET.SubElement(case, "system-out").text = _detail(r)
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def _detail(r: dict) -> str:
    return f"{r.get('src')} -> {r.get('dst')}: {line(r)}"


def line(r: dict) -> str:
    """One job's row: status, name, wall, peak memory, output size, parity verdict and worst error."""
    from ..render import human

    parts = [f"{r['status'].upper():<13} {r['name']}"]
    if r.get("wall") is not None:
        parts.append(f"{r['wall']:.1f} s")
    if r.get("peak_rss"):
        parts.append(f"peak {human(r['peak_rss'])}")
    if r.get("output_bytes"):
        parts.append(f"wrote {human(r['output_bytes'])}")
    parity = r.get("parity")
    if parity:
        verdict = "passed" if parity.get("passed") else "FAILED"
        worst = r.get("worst_error")
        parts.append(f"parity {verdict}" + (f" (max abs {worst:.3g})" if worst is not None else ""))
    text = ", ".join(parts)
    if r.get("error") and r["status"] not in OK:
        text += f": {r['error']}"
    elif r.get("error"):
        text += f" ({r['error']})"
    return text
