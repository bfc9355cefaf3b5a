"""bigan: class-conditional BigGAN and progressive GAN training across machines, ONNX serving.

`import bigan` pulls in nothing heavy (no torch, ray or onnx); import the submodules you need.
"""

__version__ = "0.1.0"
