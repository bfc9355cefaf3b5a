"""Serving exported bigan generators over HTTP and gRPC with onnxruntime, without torch.

`engine.py` opens an ONNX file (checked by `bigan.ort_session` against `bigan.onnx_metadata`) and
merges concurrent requests into micro-batches (`batcher.py`); `repository.py` holds every model
and version a server serves, each with its own engine, and reloads them; `app.py` puts the v1 API,
the response cache (`cache.py`), the KServe v2 protocol over HTTP (`kserve.py`, its content in
`v2_protocol.py`) and gRPC (`grpc_service.py`), Prometheus metrics (`metrics.py`) and a web page in
front of them; `server.py` runs it under uvicorn (`bigan serve`) and `ray_serve.py` as Ray Serve
replicas. Nothing here imports torch or training code: a serving image needs onnxruntime, NumPy,
Pillow and the web stack only (and the `grpc` extra for the gRPC port).
"""
