"""modelport batch: jobs files checked whole, each job in its own process, results streamed, resume, Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from modelport.batch import batch, load_jobs
from modelport.batch import pool
from modelport.errors import FormatError
from tests.conftest import ROOT, run_cli

EXAMPLE = ROOT / "examples" / "tiny-gpt2.pt"
CONFIG = ROOT / "examples" / "tiny-gpt2.config.json"


def jobs_file(tmp_path: Path, jobs: list, name: str = "jobs.json") -> Path:
    path = tmp_path / name
    if name.endswith((".yaml", ".yml")):
        import yaml

        path.write_text(yaml.safe_dump(jobs))
    else:
        path.write_text(json.dumps(jobs))
    return path


@pytest.fixture
def work(tmp_path):
    (tmp_path / "m.pt").write_bytes(EXAMPLE.read_bytes())
    (tmp_path / "config.json").write_bytes(CONFIG.read_bytes())
    (tmp_path / "corrupt.pt").write_bytes(b"PK\x03\x04 not really a zip")
    return tmp_path


# -- the jobs file ---------------------------------------------------------------------------

def test_yaml_and_json_jobs_mean_the_same(work):
    jobs = [{"src": "m.pt", "dst": "out/a.safetensors", "options": {"dtype": "fp16", "no_manifest": True}},
            {"name": "hf", "src": "m.pt", "dst": "out/b", "to": "hf", "options": {"--config": "config.json"},
             "verify": {"seq-len": 5, "atol": 1e-3}}]
    a, b = load_jobs(jobs_file(work, jobs, "j.yaml")), load_jobs(jobs_file(work, jobs, "j.json"))
    assert a == b
    assert a[0].name == "job 1" and a[0].src == work / "m.pt" and a[0].dst == work / "out" / "a.safetensors"
    assert a[0].argv()[2:] == ["--dtype", "fp16", "--no-manifest"]
    assert a[1].options == {"config": str(work / "config.json")}          # relative to the jobs file
    assert a[1].verify == {"seq_lens": [5], "atol": 1e-3}


def test_a_job_is_the_request_the_command_builds(work):
    """A job's options parse into the same ConvertRequest the convert command builds from the same words,
    without the batch importing the command (kv-cache: false is --no-kv-cache)."""
    from modelport.batch.jobs import check_job, request_for
    from modelport.cli import convert as convert_cmd
    from modelport.console import parse_size
    from modelport.convert.request import ConvertRequest

    job = check_job({"src": "m.pt", "dst": "out/m.onnx", "options": {
        "config": "config.json", "opset": 18, "kv-cache": False, "exporter": "torch", "shard-size": "1GB",
        "static_shapes": True, "t7-long-size": 8, "engine": "reference", "device": "cpu"}}, 0, work)
    assert "--no-kv-cache" in job.argv()
    with convert_cmd.make_context("convert", job.argv()) as ctx:
        params = {("view" if k == "view_after" else k): v for k, v in ctx.params.items()}
    params["shard_size"] = parse_size(params["shard_size"])
    request = request_for(job)
    assert request == ConvertRequest(**params)
    assert request.kv_cache is False and request.opset == 18 and request.shard_size == 10**9
    assert request.export_options().kv_cache is False and request.load_spec().engine == "reference"


def test_the_batch_does_not_import_the_command():
    from tests.test_layers import PACKAGE, _imports

    for path in sorted((PACKAGE / "batch").glob("*.py")):
        assert all(target != "modelport.cli" for _, target in _imports(path)), path


@pytest.mark.parametrize("job, says", [
    ({"src": "m.pt"}, "job 2: field 'dst' must be a path"),
    ({"src": "m.pt", "dst": "o", "colour": 1}, "unknown field 'colour'"),
    ({"src": "m.pt", "dst": "o.pt", "options": {"opsett": 17}}, "'opsett' is not a convert option"),
    ({"src": "m.pt", "dst": "o.pt", "options": {"view": True}}, "'view' is not a convert option a batch can set"),
    ({"src": "m.pt", "dst": "o.pt", "options": {"verify": True}}, "use the job's 'verify' field"),
    ({"src": "m.pt", "dst": "o.pt", "options": {"dtype": "fp8"}}, "'fp8' is not one of"),
    ({"src": "m.pt", "dst": "o.pt", "options": {"force": "yes"}}, "'force' is a flag"),
    ({"src": "m.pt", "dst": "o.pt", "verify": {"seq_len": -3}}, "positive integer lengths"),
    ({"src": "m.pt", "dst": "o.pt", "verify": {"bogus": 1}}, "'bogus' is not a parity option"),
    ({"name": "x", "src": "m.pt", "dst": "o.pt", "timeout": 0}, "job 'x': field 'timeout'"),
])
def test_a_malformed_job_is_refused_before_anything_runs(work, job, says):
    path = jobs_file(work, [{"src": "m.pt", "dst": "fine.safetensors"}, job])
    with pytest.raises(FormatError, match="job") as err:
        load_jobs(path)
    assert says in str(err.value), str(err.value)
    result = run_cli("batch", path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (work / "fine.safetensors").exists()


def test_two_jobs_writing_one_destination_are_refused(work):
    path = jobs_file(work, [{"src": "m.pt", "dst": "o.pt"}, {"src": "m.pt", "dst": "./o.pt"}])
    with pytest.raises(FormatError, match="both write"):
        load_jobs(path)


def test_a_yaml_file_cannot_build_objects(work):
    path = work / "j.yaml"
    path.write_text("- !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(FormatError, match="not valid YAML"):
        load_jobs(path)
    assert not (work / "pwned").exists()


# -- running ---------------------------------------------------------------------------------

def mixed_jobs(work: Path) -> Path:
    """A good conversion, a verified one, a corrupt source, and a cast that fails a strict parity check."""
    return jobs_file(work, [
        {"name": "st", "src": "m.pt", "dst": "out/m.safetensors"},
        {"name": "hf", "src": "m.pt", "dst": "out/m-hf", "to": "hf", "options": {"config": "config.json"},
         "verify": {"seq_len": 5, "new_tokens": 2}},
        {"name": "corrupt", "src": "corrupt.pt", "dst": "out/c.safetensors"},
        {"name": "strict", "src": "m.pt", "dst": "out/h.safetensors", "options": {"config": "config.json", "dtype": "fp16"},
         "verify": {"atol": 0, "rtol": 0, "seq_len": 5, "new_tokens": 2}},
    ])


def _table(report) -> dict:
    return {r["name"]: (r["status"], r["exit_code"], (r.get("parity") or {}).get("passed")) for r in report.results}


def test_each_job_is_reported_and_one_failure_stops_no_other(work):
    seen = []
    report = batch(mixed_jobs(work), workers=2, on_result=lambda r: seen.append(r["name"]))
    assert _table(report) == {"st": ("done", 0, None), "hf": ("passed", 0, True),
                              "corrupt": ("failed", 2, None), "strict": ("parity-failed", 1, False)}
    assert sorted(seen) == ["corrupt", "hf", "st", "strict"]         # streamed as each ended
    assert report.exit_code == 2 and not report
    rows = {r["name"]: r for r in report.results}
    assert "corrupt.pt" in rows["corrupt"]["error"]
    assert rows["strict"]["worst_error"] > 0 and "does not match" in rows["strict"]["error"]
    assert rows["st"]["output_bytes"] == (work / "out" / "m.safetensors").stat().st_size
    assert rows["hf"]["peak_rss"] > 10 << 20
    assert (work / "out" / "m-hf" / "config.json").is_file()
    assert not (work / "out" / "h.safetensors").exists() and not (work / "out" / "c.safetensors").exists()
    assert not [p for p in (work / "out").iterdir() if ".modelport-" in p.name and p.name.endswith(".tmp")]


def test_exit_codes_json_and_junit_from_the_command(work):
    path = jobs_file(work, [{"name": "st", "src": "m.pt", "dst": "out/m.safetensors"},
                            {"name": "strict", "src": "m.pt", "dst": "out/h.safetensors",
                             "options": {"config": "config.json", "dtype": "fp16"},
                             "verify": {"atol": 0, "rtol": 0, "seq_len": 5, "new_tokens": 1}}])
    result = run_cli("batch", path, "--json", "--junit", work / "j.xml")
    assert result.returncode == 1, result.stderr                    # a parity check failed; every job ran
    data = json.loads(result.stdout)
    assert data["counts"] == {"done": 1, "parity-failed": 1}
    assert "[1/2]" in result.stderr and "[2/2]" in result.stderr      # progress lines beside the JSON
    from xml.etree import ElementTree as ET

    suite = ET.parse(work / "j.xml").getroot()
    assert suite.get("tests") == "2" and suite.get("failures") == "1" and suite.get("errors") == "0"


def test_a_killed_job_process_is_reported_as_such_and_leaves_nothing(work, tmp_path):
    from modelport.batch.jobs import check_job

    job = check_job({"src": "m.pt", "dst": "out/m.onnx", "options": {"config": "config.json", "opset": 21},
                     "verify": {"seq_len": [64, 64, 64], "new_tokens": 32}}, 0, work)     # several seconds of work
    proc = pool.JobProcess(job, tmp_path)
    time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)            # as the kernel's out-of-memory killer would
    row = proc.result()
    assert row["status"] == "crashed" and row["exit_code"] == 2 and "SIGKILL" in row["error"], row
    assert not (work / "out").exists() or not list((work / "out").iterdir())


def test_a_job_past_its_timeout_is_stopped_and_leaves_nothing(work):
    path = jobs_file(work, [{"name": "slow", "src": "m.pt", "dst": "out/m.onnx", "timeout": 0.5,
                             "options": {"config": "config.json", "opset": 21},      # several seconds of work
                             "verify": {"seq_len": [64, 64, 64], "new_tokens": 32}}])
    report = batch(path)
    row = report.results[0]
    assert row["status"] == "timeout" and row["exit_code"] == 2, row
    assert not (work / "out").exists() or not list((work / "out").iterdir())


def test_resume_skips_what_still_verifies_and_reruns_the_rest(work):
    path = jobs_file(work, [{"name": "a", "src": "m.pt", "dst": "out/a.safetensors"},
                            {"name": "b", "src": "m.pt", "dst": "out/b.pt"}])
    assert batch(path)
    report = batch(path, resume=True)
    assert {r["name"]: r["status"] for r in report.results} == {"a": "resumed", "b": "resumed"}
    data = bytearray((work / "out" / "b.pt").read_bytes())
    data[-100] ^= 1                                                   # the output changed since
    (work / "out" / "b.pt").write_bytes(bytes(data))
    jobs = json.loads(path.read_text())
    jobs[0]["options"] = {"dtype": "bf16"}                           # and a's options changed
    path.write_text(json.dumps(jobs))
    report = batch(path, resume=True)
    assert {r["name"]: r["status"] for r in report.results} == {"a": "failed", "b": "failed"}
    assert all("exists" in r["error"] for r in report.results)        # they ran again (and need force)
    jobs[0]["options"]["force"] = jobs[1].setdefault("options", {})["force"] = True
    path.write_text(json.dumps(jobs))
    assert {r["status"] for r in batch(path, resume=True).results} == {"done"}


@pytest.mark.slow
def test_an_interrupted_batch_stops_its_jobs_and_resumes(work):
    path = jobs_file(work, [{"name": "quick", "src": "m.pt", "dst": "out/m.safetensors"},
                            {"name": "traced", "src": "m.pt", "dst": "out/m.onnx",              # torch.export: seconds
                             "options": {"config": "config.json", "opset": 21, "exporter": "torch"}}])
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "modelport", "batch", str(path), "--workers", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert "[1/2]" in proc.stdout.readline()       # the quick job is done, the traced one running
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "--resume" in err
    assert sorted(p.name for p in (work / "out").iterdir()) == ["m.safetensors", "m.safetensors.modelport.json"]
    result = run_cli("batch", path, "--resume")
    assert result.returncode == 0, result.stderr
    assert "RESUMED       quick" in result.stdout and (work / "out" / "m.onnx").is_file()


def test_ray_gives_the_table_the_local_pool_gives(work):
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'modelport[ray]')")
    local = batch(mixed_jobs(work), workers=2)
    for p in sorted((work / "out").rglob("*"), reverse=True):
        p.rmdir() if p.is_dir() else p.unlink()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = batch(mixed_jobs(work), ray=True)
    finally:
        ray.shutdown()
    assert on_ray.runner == "ray" and _table(on_ray) == _table(local)


def test_a_path_a_ray_node_cannot_see_is_named(work):
    row = pool._ray_task({"name": "x", "src": str(work / "elsewhere.pt"), "dst": str(work / "o.pt")})
    assert row["exit_code"] == 2 and "storage every node" in row["error"] and "elsewhere.pt" in row["error"]


def test_a_graph_jobs_parity_options_reach_its_check(work):
    path = jobs_file(work, [{"name": "onnx", "src": "m.pt", "dst": "out/m.onnx", "options": {"config": "config.json"},
                             "verify": {"seq_len": [5], "new_tokens": 1}}])
    (row,) = batch(path).results
    assert row["status"] == "passed", row
    assert [i["seq_len"] for i in row["parity"]["inputs"]] == [5] and row["parity"]["new_tokens"] == 1
