"""`bigan serve --ray` (serving/ray_serve.py) on a real local Ray cluster over loopback HTTP: the
replicas answer the bytes one process answers; Ray Serve's autoscaler adds a replica when the
requests in flight per replica pass the target; a replica killed with SIGKILL under load fails
only the requests it held, each a 503 with Retry-After (Ray's proxy alone answers them 500); a
repository unload and load reach every replica; the response cache works per replica. Without a
cluster: the autoscaling flags, their checks, and `--grpc-port` with `--ray` refused in one line.

The cluster tests share one cluster and one deployment (starting either takes ~10 s on one core)
and run in file order: one replica, then two under load, then one of them killed."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
import urllib.error
import urllib.request

import pytest

from bigan.cli import main
from serving.config import EngineConfig, ServeConfig

# Fast autoscaling metrics for the test cluster (Ray's defaults push every 10 s and record every
# 0.2 x look-back = 6 s, which would make the scale-up take ~20 s).
FAST_METRICS = {"RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.2",
                "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "0.2",
                "RAY_SERVE_AUTOSCALING_METRIC_RECORD_INTERVAL_FACTOR": "0.01",
                "RAY_USAGE_STATS_ENABLED": "0"}
# A replica starts in ~5 s on an idle core; on this shared machine under load it took up to 140 s.
# Only a bound for a failure: the polls below return as soon as the replica runs.
STARTUP_S = 240


def post(url: str, body: dict, timeout: float = 30) -> tuple[int, dict, bytes]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def poll(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        time.sleep(0.2)


# --- without a cluster ----------------------------------------------------------------------------

@pytest.mark.serving
def test_autoscaling_flags_and_their_checks(tiny_onnx, capsys):
    pytest.importorskip("fastapi")
    from serving.ray_serve import replica_options

    fixed = replica_options(ServeConfig(model="m", workers=3))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    cfg = ServeConfig(model="m", min_replicas=2, max_replicas=5, target_ongoing_requests=4,
                      upscale_delay_s=1, downscale_delay_s=9)
    assert replica_options(cfg)["autoscaling_config"] == dict(
        min_replicas=2, initial_replicas=2, max_replicas=5, target_ongoing_requests=4,
        upscale_delay_s=1, downscale_delay_s=9)
    assert replica_options(ServeConfig(model="m", max_replicas=4))["autoscaling_config"][
        "min_replicas"] == 1
    for bad, flag in [(dict(min_replicas=0), "--min-replicas"),
                      (dict(min_replicas=3, max_replicas=2), "--max-replicas"),
                      (dict(target_ongoing_requests=0), "--target-ongoing-requests"),
                      (dict(target_ongoing_requests=float("nan")), "--target-ongoing-requests"),
                      (dict(upscale_delay_s=-1), "--upscale-delay"),
                      (dict(downscale_delay_s=float("inf")), "--downscale-delay")]:
        with pytest.raises(ValueError, match=flag):
            ServeConfig(model="m", **bad)
    model = str(tiny_onnx)
    for argv, words in [(["--ray", "--grpc-port", "8001"], "--grpc-port is served by"),
                        (["--max-replicas", "3"], "add --ray"),
                        (["--ray", "--max-replicas", "0"], "--max-replicas=0")]:
        assert main(["serve", model, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err


@pytest.mark.serving
def test_deployment_binds_the_front_door_to_the_replicas_without_a_cluster(tiny_onnx):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (the ray-serve extra)")
    from serving.ray_serve import deployment

    cfg = ServeConfig(model=str(tiny_onnx), workers=3, engine=EngineConfig(max_batch=16))
    front = deployment(cfg)._bound_deployment
    generator = front.init_args[0]._bound_deployment
    assert front.name == "bigan" and generator.name == "bigan-generator"
    assert generator.num_replicas == 3 and generator.max_ongoing_requests == 32
    assert ServeConfig.from_json(generator.init_args[0]) == cfg
    with pytest.raises(ValueError, match="grpc_port"):
        deployment(ServeConfig(model=str(tiny_onnx), grpc_port=8001))


# --- on a local Ray cluster -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def repo_dir(tiny_onnx, tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-repo")
    shutil.copy(tiny_onnx, root / "a.onnx")
    (root / "b" / "1").mkdir(parents=True)
    shutil.copy(tiny_onnx, root / "b" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def reference(repo_dir):
    """The same repository served by one in-process app: what every replica must answer."""
    pytest.importorskip("onnxruntime")
    from fastapi.testclient import TestClient

    from serving.server import build_app

    with TestClient(build_app(ServeConfig(model=str(repo_dir), engine=EngineConfig(max_batch=8)))) as c:
        yield c


@pytest.fixture(scope="module")
def cluster(repo_dir):
    """A local Ray cluster (2 CPUs) with the repository deployed on loopback: 1 to 2 replicas,
    a replica added as soon as more than one request is in flight per replica."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (the ray-serve extra)")
    import ray
    from ray import serve

    from serving.client import free_port, wait_ready
    from serving.ray_serve import deployment

    saved = {k: os.environ.get(k) for k in FAST_METRICS}
    os.environ.update(FAST_METRICS)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = ServeConfig(model=str(repo_dir), min_replicas=1, max_replicas=2,
                          target_ongoing_requests=1, upscale_delay_s=0, downscale_delay_s=600,
                          engine=EngineConfig(max_batch=8))
        serve.run(deployment(cfg), name="bigan", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        # serve.run returns once the replicas run; the proxy may still be binding its port or
        # learning the route (404 meanwhile).
        wait_ready(url, STARTUP_S)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()
        for k, v in saved.items():
            if v is None:
                del os.environ[k]
            else:
                os.environ[k] = v


def running_replicas() -> int:
    from ray import serve

    states = serve.status().applications["bigan"].deployments["bigan-generator"].replica_states
    return states.get("RUNNING", 0)


class Load:
    """`clients` threads posting unseeded (so never cached) /v1 requests until stopped."""

    def __init__(self, url: str, clients: int = 4):
        self.url, self.stop, self.answers = url, threading.Event(), []
        self.threads = [threading.Thread(target=self.run, args=(i,)) for i in range(clients)]

    def run(self, i: int) -> None:
        while not self.stop.is_set():
            status, headers, body = post(self.url + "/v1/generate",
                                         {"model": "a", "class": i % 4, "n": 8})
            self.answers.append((status, headers.get("retry-after"), body))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(60)


REQUESTS = [{"model": "a", "class": 1, "seed": 5, "n": 4}, {"model": "b", "class": 3, "seed": 0},
            {"model": "a", "class": 2, "seed": 9, "n": 2, "truncation": 0.5}]


def assert_same_images_as_one_process(url, reference, rounds: int) -> None:
    for body in REQUESTS * rounds:
        status, _, content = post(url + "/v1/generate", body)
        expected = reference.post("/v1/generate", json=body)
        assert status == 200 and expected.status_code == 200
        assert content == expected.content, body


@pytest.mark.ray
@pytest.mark.slow
def test_one_replica_answers_the_images_of_one_process(cluster, reference):
    assert running_replicas() == 1
    assert_same_images_as_one_process(cluster, reference, rounds=1)
    index = post(cluster + "/v2/repository/index", {})
    assert index[0] == 200 and [m["name"] for m in json.loads(index[2])] == ["a", "b"]


@pytest.mark.ray
@pytest.mark.slow
def test_load_adds_a_replica_and_both_answer_the_same_images(cluster, reference):
    with Load(cluster) as load:
        poll(lambda: running_replicas() == 2, STARTUP_S, "a second replica under 4 clients")
    assert load.answers and all(status == 200 for status, _, _ in load.answers)
    assert_same_images_as_one_process(cluster, reference, rounds=3)


@pytest.mark.ray
@pytest.mark.slow
def test_killed_replica_fails_only_its_requests_with_503(cluster):
    import ray

    poll(lambda: running_replicas() == 2, STARTUP_S, "two replicas")
    name = next(a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                if a["name"].startswith("SERVE_REPLICA::bigan#bigan-generator#"))
    replica = ray.get_actor(name, namespace="serve")
    pid = ray.get(replica.__ray_call__.remote(lambda self: os.getpid()))
    clients = 4
    with Load(cluster, clients) as load:
        poll(lambda: len(load.answers) >= 8, 120, "8 answers before the kill")
        before = len(load.answers)
        os.kill(pid, signal.SIGKILL)
        poll(lambda: len(load.answers) >= before + 20, 120, "20 answers after the kill")
    statuses = [status for status, _, _ in load.answers]
    lost = [(s, retry, body) for s, retry, body in load.answers if s != 200]
    assert all(s == 200 for s in statuses[:before])
    # Each client has one request in flight, so the killed replica held at most `clients`; none
    # may be lost at all (Ray Serve retries a request whose replica died before taking it, and on
    # a quiet machine the kill can land between requests), and whatever is lost is a 503.
    assert len(lost) <= clients, statuses
    for status, retry_after, body in lost:
        assert status == 503 and int(retry_after) >= 1, (status, body)
        assert "retry" in json.loads(body)["detail"]


@pytest.mark.ray
@pytest.mark.slow
def test_unload_and_load_reach_every_replica(cluster, reference):
    poll(lambda: running_replicas() == 2, STARTUP_S, "two replicas again after the kill")
    body = {"model": "b", "class": 1, "seed": 2}
    assert post(cluster + "/v2/repository/models/b/unload", {})[0] == 200
    # A replica that missed the unload would answer some of these 200 (the router spreads them).
    poll(lambda: all(post(cluster + "/v1/generate", body)[0] == 404 for _ in range(8)), 60,
         "model b unloaded on every replica")
    assert post(cluster + "/v2/repository/models/b/load", {})[0] == 200
    poll(lambda: all(post(cluster + "/v1/generate", body)[0] == 200 for _ in range(8)), 60,
         "model b loaded again on every replica")
    assert_same_images_as_one_process(cluster, reference, rounds=1)


@pytest.mark.ray
@pytest.mark.slow
def test_each_replica_caches_what_it_answered(cluster):
    body = {"model": "a", "class": 0, "seed": 77, "n": 2}
    answers = [post(cluster + "/v1/generate", body) for _ in range(8)]
    assert len({content for _, _, content in answers}) == 1
    caches = [headers["x-cache"] for _, headers, _ in answers]
    # Each replica misses once at most, then answers from its own cache.
    assert caches.count("miss") <= running_replicas() and caches[-1] == "hit", caches
