"""bench/gpu_check.py (`make gpu-check`) off a GPU: it says so and runs nothing; each part runs in
its own process group with its own timeout, so a hanging part is killed and recorded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

pytestmark = pytest.mark.unit

sys.path.insert(0, str(ROOT / "bench"))
import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without CUDA")
def test_without_cuda_it_says_so_exits_0_and_runs_nothing(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "bench/gpu_check.py", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no CUDA GPU on this machine" in done.stdout and "nothing was run" in done.stdout
    assert list(tmp_path.iterdir()) == []  # no JSON, no part started


def test_a_part_that_hangs_is_killed_and_recorded_and_a_failing_one_too():
    hang = gpu_check.run_part([sys.executable, "-c", "import time; print('started', flush=True); "
                               "time.sleep(60)"], timeout=2)
    assert hang["timed_out"] and not hang["ok"] and hang["seconds"] < 30
    assert "started" in hang["tail"]
    fail = gpu_check.run_part([sys.executable, "-c", "raise SystemExit('boom')"], timeout=30)
    assert (fail["ok"], fail["rc"], fail["timed_out"]) == (False, 1, False) and "boom" in fail["tail"]
    ok = gpu_check.run_part([sys.executable, "-c", "print('fine')"], timeout=30)
    assert ok["ok"] and ok["rc"] == 0


def test_the_parts_cover_tests_training_and_serving_in_both_precisions(tmp_path):
    names = [name for name, *_ in gpu_check.parts(tmp_path)]
    assert names == ["gpu_tests", "train_step_biggan128_fp32", "train_step_biggan128_bf16",
                     "serving_cuda_fp32", "serving_cuda_fp16"]
    assert sum(timeout for _, _, timeout, _ in gpu_check.parts(tmp_path)) <= 480  # the 8 minutes


def test_the_gpu_tests_part_checks_the_plans_memory_and_keeps_its_figures(tmp_path):
    """The plan's memory check (tests/test_plan.py, marked gpu) runs in the first part, and the
    JUnit file that part writes keeps what a test records (its figures reach gpu_check.json):
    the part's own JUnit options on a probe test, in a real pytest process."""
    (name, cmd, _, _), *_ = gpu_check.parts(tmp_path)
    assert name == "gpu_tests" and "tests/test_plan.py" in cmd and "-m" in cmd
    family = cmd[cmd.index("-o"):cmd.index("-o") + 2]
    (tmp_path / "test_probe.py").write_text(
        "def test_probe(record_property):\n    record_property('plan_bytes', 123)\n")
    junit = tmp_path / "probe.xml"
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "test_probe.py", f"--junitxml={junit}", *family], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    counts = gpu_check._junit_counts(junit)
    assert counts["passed"] == 1 and counts["properties"] == {"test_probe": {"plan_bytes": "123"}}
