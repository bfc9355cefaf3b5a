"""Released GAN weights as bigan checkpoints (`bigan import FORMAT SRC --out DIR`).

Each format has its own module with `convert(src, out, ...)`: `biggan_pytorch` (ajbrock's
BigGAN-PyTorch G / G_ema state dicts, for `model.arch=biggan`) and `hf_biggan` (huggingface
pytorch-pretrained-BigGAN, for `model.arch=biggan-deep`). They share `common.py`: reading a file
without ever unpickling code, naming the first mismatched key and its shapes, and writing the
generator with its config as `DIR/checkpoints/step-00000000/`, which `bigan sample`, `export`,
`eval` and (after export) `serve` take like any training run. `class_names.py` picks the class
names written with it: a `--class-names` file, else for a 1,000-class model the ImageNet-1k names
shipped as `imagenet_classes.txt` (torchvision's list, BSD-3-Clause), else the ids.
Layer 3: imports models, checkpoint and config, nothing above.
"""

FORMATS = ("biggan-pytorch", "hf-biggan")  # `bigan import` formats, in the order --help lists them
