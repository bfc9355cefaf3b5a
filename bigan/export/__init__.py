"""Exporting a trained generator for serving: `bigan.export.onnx` writes one self-contained ONNX
file with the EMA generator and checks it against PyTorch; `bigan.onnx_metadata` is the contract
written into that file, read back by the torch-free server. Importing this package loads nothing
heavy; `bigan.export.onnx` needs the `export` extra (onnx, onnxscript, onnxruntime) and torch.
"""
