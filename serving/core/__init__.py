"""The serving core, which knows no protocol: `engine.py` (an ONNX generator's session behind a
micro-batcher, `batcher.py`), `repository.py` (every model and version a server holds, scanned
from a file or a directory, loaded and unloaded while serving), `cache.py` (finished responses),
`metrics.py` (Prometheus), `gpu_path.py` (IO binding, CUDA graphs, TensorRT) and `config.py`
(`EngineConfig`). The transports (`serving.transports`) speak the protocols over it.
"""
