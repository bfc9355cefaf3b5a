"""The same HTTP app as Ray Serve replicas, for scaling out over a Ray cluster.

`deployment(cfg, replicas)` returns a bound Ray Serve application whose ingress is the app of
`serving.app` built on each replica by `serving.server.app_from_env` (the config travels in the
replica's runtime environment), so every replica owns one onnxruntime session and its own
micro-batcher. `max_ongoing_requests` is two batches' worth, so a replica is sent enough concurrent
requests to fill a batch while the previous one computes; beyond that Ray's proxy queues them.
Ray is imported only when this module is used (`pip install 'ray[serve]' -c constraints.txt`).
"""

from __future__ import annotations

import dataclasses

from serving.core.repository import ModelRepository
from serving.server import CONFIG_ENV, ServeConfig, app_from_env


def deployment(cfg: ServeConfig, replicas: int | None = None, num_gpus: float = 0.0):
    """A Ray Serve `Application` of `replicas` (default cfg.workers) copies of the app."""
    try:
        from ray import serve
    except ImportError as e:
        raise RuntimeError("--ray needs Ray Serve: pip install 'ray[serve]' -c constraints.txt") from e
    replicas = replicas or cfg.workers
    if replicas < 1:
        raise ValueError(f"replicas={replicas} must be >= 1")
    ingress = serve.ingress(app_from_env)()
    options = dict(
        name="bigan", num_replicas=replicas,
        max_ongoing_requests=max(2 * cfg.engine.max_batch, 8),
        ray_actor_options={"num_gpus": num_gpus,
                           "runtime_env": {"env_vars": {CONFIG_ENV: cfg.to_json()}}},
    )
    return serve.deployment(ingress, **options).bind()


def serve_forever(cfg: ServeConfig, replicas: int | None = None) -> None:
    """Start (or join) a Ray cluster, deploy on cfg.host:cfg.port and block until interrupted.
    Each replica gets a whole GPU when the cluster has GPUs, else runs on CPUs."""
    import ray
    from ray import serve

    # Refuse a bad file here, with the file named, rather than in every replica's log.
    ModelRepository.open(cfg.model, dataclasses.replace(cfg.engine, provider="cpu"), cfg.name)
    ray.init(ignore_reinit_error=True)
    gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    app = deployment(cfg, replicas, num_gpus=gpus)
    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(app, name="bigan", route_prefix="/", blocking=True)
