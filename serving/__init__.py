"""Serving exported bigan generators over HTTP with onnxruntime, without torch.

`engine.py` opens the ONNX file (checked by `metadata.py` against `bigan.onnx_metadata`) and merges
concurrent requests into micro-batches (`batcher.py`); `app.py` puts the v1 API, the KServe v2
protocol (`kserve.py`), Prometheus metrics (`metrics.py`) and a web page in front of it;
`server.py` runs it under uvicorn (`bigan serve`) and `ray_serve.py` as Ray Serve replicas. Nothing
here imports torch or training code: a serving image needs onnxruntime, NumPy, Pillow and the web
stack only.
"""
