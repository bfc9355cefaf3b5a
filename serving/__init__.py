"""Serving exported bigan generators over HTTP and gRPC with onnxruntime, without torch.

Two wings, as Triton separates its core from its transports. `serving.core` opens ONNX files
(checked by `bigan.ort_session` against `bigan.onnx_metadata`), merges concurrent requests into
micro-batches, holds every model and version a server serves and reloads them, and keeps the
response cache and the metrics. `serving.transports` speaks the protocols over it: the v1 API and
the operations routes, the KServe v2 protocol over HTTP and gRPC, the web page, the middleware.
`app.py` composes them into one FastAPI app, `config.py` holds every serve setting (and generates
the `bigan serve` flags), `server.py` runs it under uvicorn and `ray_serve.py` as Ray Serve
replicas; `client.py` is a standard-library client. Nothing here imports torch or training code:
a serving image needs onnxruntime, NumPy, Pillow and the web stack only (and the `grpc` extra for
the gRPC port).
"""
