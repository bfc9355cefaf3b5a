"""bench/serving.py end to end on the tiny test model: every measurement is made and written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.serving

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")


def test_lean_client_reads_what_http_client_reads(tiny_onnx, tmp_path):
    """The bench's raw-socket client gets the same status and body bytes as http.client from a
    real `bigan serve`, valid requests and refused ones, across buffer regrowth (a 100-byte
    buffer grows in the header and in the body); and `drive` raises on a non-200."""
    import http.client

    from bench.serving import LeanConnection, drive
    from serving.client import started_server

    requests = [{"class": 1, "n": 1, "seed": 7, "format": "npy"},
                {"class": 2, "n": 4, "seed": 3, "format": "png"},
                {"class": 0, "n": 2, "seed": 5, "format": "npy"},
                {"class": 99, "n": 1, "seed": 0, "format": "npy"},  # no such class: refused
                {"class": 1, "n": 1, "seed": "x"}]  # invalid body: refused
    with open(tmp_path / "server.log", "wb") as log, \
            started_server(tiny_onnx, "--cache-mb", "0", output=log, cwd=ROOT) as server:
        lean = LeanConnection("127.0.0.1", server.port, buffer_bytes=100)
        reference = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        statuses = []
        for request in requests:
            status, body = lean.exchange(lean.encode(request))
            reference.request("POST", "/v1/generate", json.dumps(request),
                              {"Content-Type": "application/json"})
            answer = reference.getresponse()
            assert (status, bytes(body)) == (answer.status, answer.read())
            statuses.append(status)
        lean.close()
        reference.close()
        assert statuses[:3] == [200] * 3 and all(400 <= s < 500 for s in statuses[3:])
        with pytest.raises(RuntimeError, match="server answered 4"):
            drive(server.port, 1, 0.2, 4, requests=lambda k, i: requests[3])


@pytest.mark.parametrize("inline", [False, True])
def test_the_floor_server_answers_bigan_serves_bytes(tiny_onnx, tmp_path, inline):
    """bench/raw_server.py, the floor `--floor` compares with, does the same work as `bigan serve`
    for a one-image npy request: the same latent, session and .npy bytes for each (class, seed)."""
    from bench.serving import LeanConnection, raw_server
    from serving.client import started_server

    requests = [{"class": c, "n": 1, "seed": s, "format": "npy"} for c, s in ((1, 7), (3, 0))]
    with open(tmp_path / "server.log", "wb") as log, \
            started_server(tiny_onnx, "--cache-mb", "0", output=log, cwd=ROOT) as server, \
            raw_server(tiny_onnx, inline) as (port, _):
        served, floor = (LeanConnection("127.0.0.1", p) for p in (server.port, port))
        bodies = []
        for request in requests:
            a, b = (conn.exchange(conn.encode(request)) for conn in (served, floor))
            assert a[0] == b[0] == 200 and bytes(a[1]) == bytes(b[1])
            bodies.append(bytes(b[1]))
        assert bodies[0] != bodies[1]
        served.close()
        floor.close()


@pytest.mark.slow
def test_serving_bench_measures_runtimes_and_the_server(tiny_checkpoint, tiny_onnx, tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "serving.py"), "--quick", "--seconds", "0.4", "--rounds", "2",
         "--cache-keys", "50", "--checkpoint", str(tiny_checkpoint), "--model", str(tiny_onnx), "--out", str(tmp_path),
         "--floor"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "serving.json").read_text())
    latency = {(r["runtime"], r["batch"]): r for r in report["latency"]}
    assert set(latency) == {(rt, n) for rt in ("pytorch-eager", "onnxruntime") for n in (1, 32)}
    assert all(r["p50_ms"] > 0 and r["calls"] >= 3 for r in latency.values())
    assert latency[("onnxruntime", 1)]["device"] == report["machine"]["provider"]
    assert [r["batch"] for r in report["ort_over_eager"]] == [1, 32]
    for r in report["ort_over_eager"]:
        assert len(r["ort_over_eager_per_round"]) == 2 and r["ort_over_eager"] > 0
    assert report["in_process"]["batch"] == 16 and report["in_process"]["img_per_sec"] > 0
    rows = report["server"]["rows"]
    assert [r["clients"] for r in rows] == [1, 16]
    assert len(report["in_process"]["img_per_sec_per_measurement"]) == 2 * (1 + 2)  # bracketing
    for r in rows:
        assert len(r["fraction_per_round"]) == 2 and r["fraction_of_in_process"] > 0
        assert r["requests"] > 0 and r["img_per_sec"] > 0 and 0 < r["p50_ms"] <= r["p99_ms"]
    assert report["server"]["server_peak_rss_mib"] >= report["server"]["server_idle_peak_rss_mib"] > 0
    assert report["model"]["precision"] == "fp32" and report["model"]["resolution"] == 32
    assert "bigan serve, 16 client(s)" in out.stdout and "onnxruntime / eager time, batch 32" in out.stdout
    cache = report["cache"]
    assert {(r["clients"], r["cache"]) for r in cache["rows"]} == {
        (c, on) for c in (1, 16) for on in ("off", "on")}
    for r in cache["rows"]:
        assert len(r["img_per_sec_per_round"]) == 2 and 0 < r["p50_ms"] <= r["p99_ms"]
        rates = r["hit_rate_per_round"]
        assert all(h == 0 for h in rates) if r["cache"] == "off" else all(0 < h <= 1 for h in rates)
    assert len(cache["speedup_per_round"]["16"]) == 2 and cache["speedup_median"]["1"] > 0
    assert "cache on / off images/s, 16 client(s)" in out.stdout
    floor = report["floor"]["rows"]
    assert [r["server"] for r in floor] == ["bigan serve", "raw server, worker thread",
                                            "raw server, inline"]
    for r in floor:
        assert len(r["fraction_per_round"]) == 2 and r["fraction_of_in_process_batch_1"] > 0
        assert r["loop_cpu_ms_per_request"] > 0
    assert "1 client, raw server, inline: of in-process at batch 1" in out.stdout


def test_gpu_path_bench_times_every_variant(tiny_onnx, tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_path.py"), "--model", str(tiny_onnx),
         "--batches", "1,3", "--rounds", "2", "--reps", "1", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_path.json").read_text())
    assert report["buckets"] == [1, 2, 3]
    variants = {"plain", "bound", "padded"} | ({"graphs"} if "CUDA" in report["provider"] else set())
    assert set(report["median_ms"]) == variants
    for per_batch in report["all_ms"].values():
        assert sorted(per_batch) == ["1", "3"] and all(len(v) == 2 for v in per_batch.values())
        assert all(t > 0 for v in per_batch.values() for t in v)
    assert "x plain" in out.stdout
