"""`make gpu-check`: everything a CUDA machine can tell us, in at most 8 minutes on one GPU.

Parts, each in its own subprocess with its own timeout, so a hang or crash in one is recorded
and the others still run:
  1. the tests marked `gpu` (tests/test_gpu.py: bf16 training step and trainer on CUDA, DDP over
     NCCL on the GPUs present, ZeRO-2, export parity and the serving engine on the CUDA provider)
     and in tests/test_plan.py (`bigan plan`'s memory per GPU against torch.cuda.max_memory_allocated
     of a real BigGAN-128 iteration; both figures go into the JSON, under the part's `properties`);
  2. bench/train_step.py at BigGAN-128 paper width (ch 96), fp32 and bf16: plain eager NCHW
     against bigan's default, alternating rounds;
  3. bench/serving.py with the CUDA provider at the paper's width, fp32 and fp16 weights.
Writes ONE JSON (default bench/results/gpu_check.json) with the GPU's name, every part's
status, time and figures, and each failure's output tail. Without CUDA it says so and exits 0
having run nothing. Exit status 1 when a part failed (the JSON is written either way).

    python bench/gpu_check.py [--out bench/results] [--budget 480]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_part(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Run `cmd` from the repository root in its own process group; on timeout kill the whole
    group (DDP and server children included). Returns {ok, rc, seconds, timed_out, tail}."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return {"ok": proc.returncode == 0 and not timed_out, "rc": proc.returncode,
            "seconds": round(time.perf_counter() - start, 1), "timed_out": timed_out,
            "timeout_s": round(timeout, 1), "command": " ".join(cmd), "tail": (out or "")[-3000:]}


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def parts(tmp: Path) -> list[tuple[str, list[str], float, Path | None]]:
    """(name, command, timeout in s, JSON it writes) of each part, in running order."""
    py = sys.executable
    junit = tmp / "gpu_tests.xml"
    # xunit1: the JUnit family whose schema has record_property's figures (xunit2 warns)
    out = [("gpu_tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-rs", "tests/test_gpu.py",
                          "tests/test_plan.py", f"--junitxml={junit}", "-o", "junit_family=xunit1"],
            130, None)]
    for precision in ("fp32", "bf16"):
        out.append((f"train_step_biggan128_{precision}",
                    [py, "bench/train_step.py", "--cases", "biggan-128", "--precisions", precision,
                     "--batch", "32", "--rounds", "3", "--iters", "3", "--out", str(tmp),
                     "--name", f"train_step_{precision}.json"], 75, tmp / f"train_step_{precision}.json"))
    for precision in ("fp32", "fp16"):
        (tmp / f"serving_{precision}").mkdir(parents=True, exist_ok=True)
        out.append((f"serving_cuda_{precision}",
                    [py, "bench/serving.py", "--rounds", "1", "--seconds", "2", "--out",
                     str(tmp / f"serving_{precision}")] + (["--fp16"] if precision == "fp16" else []),
                    95, tmp / f"serving_{precision}" / "serving.json"))
    return out


def _junit_counts(path: Path) -> dict | None:
    import xml.etree.ElementTree as ET

    try:
        suite = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    cases, properties = {}, {}
    for case in suite.iter("testcase"):
        if found := {p.get("name"): p.get("value") for p in case.iter("property")}:
            properties[case.get("name")] = found  # the test's record_property figures
        status = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                status = tag
        cases[case.get("name")] = status
    return {"tests": cases, "passed": sum(s == "passed" for s in cases.values()),
            "failed": sum(s in ("failure", "error") for s in cases.values()),
            "skipped": sum(s == "skipped" for s in cases.values()), "properties": properties}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results", help="directory for gpu_check.json")
    parser.add_argument("--budget", type=float, default=480, help="seconds for all parts together")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("gpu-check: no CUDA GPU on this machine (torch.cuda.is_available() is False); "
              "nothing was run. Run `make gpu-check` on a machine with an NVIDIA GPU.")
        return 0
    deadline = time.perf_counter() + args.budget
    report = {"gpu": torch.cuda.get_device_name(0), "gpu_count": torch.cuda.device_count(),
              "torch": torch.__version__, "cuda": torch.version.cuda,
              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "parts": {}}
    print(f"gpu-check on {report['gpu']} (x{report['gpu_count']}), budget {args.budget:.0f} s", flush=True)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        tmp = Path(tmp)
        for name, cmd, timeout, result_json in parts(tmp):
            left = deadline - time.perf_counter()
            if left < 10:
                report["parts"][name] = {"ok": False, "skipped": "the time budget ran out"}
                print(f"  {name}: skipped (budget spent)", flush=True)
                continue
            threads = os.environ.get("OMP_NUM_THREADS", "4")  # CPU work beside the GPU's
            part = run_part(cmd, min(timeout, left), env={"OMP_NUM_THREADS": threads})
            if name == "gpu_tests":
                part["result"] = _junit_counts(tmp / "gpu_tests.xml")
            elif result_json is not None:
                part["result"] = _json(result_json)
            if part["ok"]:
                part.pop("tail")
            report["parts"][name] = part
            status = "ok" if part["ok"] else ("TIMED OUT" if part["timed_out"] else f"FAILED rc={part['rc']}")
            print(f"  {name}: {status} in {part['seconds']} s", flush=True)
    report["ok"] = all(p.get("ok") for p in report["parts"].values())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    print(f"wrote {out / 'gpu_check.json'} ({'all parts ok' if report['ok'] else 'some parts failed'})")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
