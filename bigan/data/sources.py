"""Reading the image collections `bigan data pack` accepts, and preparing one image for a shard.

Three on-disk layouts become one `ImageSource` (class names, int64 labels and, per sample, a
file path or a uint8 HWC array):

- an ImageFolder tree: one sub-folder per class, classes in sorted folder order, named by the
  folder or by a `classes.json` (folder name -> class name, in the root or its parent, as
  Imagenette ships it) that names every folder;
  images are the files, searched recursively, with an extension of a format Pillow reads
  (`bigan.data.image_files.readable_extensions`: jpg, png, webp, tif, gif, bmp, ... any case);
  every other file under the root is reported in `ImageSource.left_out` with its cause
  (`unsupported_extension`, `outside_class_folder`, `broken_link`), never dropped silently;
- CIFAR-10/100 pickled batches (`data_batch_*` / `test_batch`, or `train` / `test`), with class
  names from `batches.meta` / `meta`;
- a NumPy `.npz` holding `images` (uint8, NHWC or NHW), `labels` and optionally `class_names`.

`square_resize` is the one resampling rule, shared by the packer and the streaming loader:
centre crop to a square, then an anti-aliased Lanczos resize (BigGAN's data preparation does
the same crop; Lanczos is what stylegan's dataset_tool uses). NumPy and Pillow only.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bigan.data.image_files import readable_extension

# The member extensions the streaming loader takes as a sample's image inside foreign tars.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# Files a folder source leaves out, and why (the packer adds the decoding causes).
FOLDER_CAUSES = (
    "unsupported_extension",  # not an extension of a format Pillow reads (.txt, .json, .DS_Store)
    "outside_class_folder",  # a file in the root itself, not in a class sub-folder
    "broken_link",  # a symbolic link whose target is gone
)
_ROOT_FILES = ("classes.json",)  # files the root may hold by design


class DataError(ValueError):
    """A data set on disk is missing, malformed or inconsistent; the message names the file."""


@dataclass
class ImageSource:
    """Images to pack: a path or an array per sample, with labels into `class_names`."""

    kind: str  # imagefolder | cifar | npz | digits | synthetic
    path: str  # where the images came from (recorded in dataset.json)
    class_names: list[str]
    labels: np.ndarray  # int64 [N]
    files: list[str] | None = None  # imagefolder: one image file per sample
    images: np.ndarray | None = None  # array sources: uint8 [N, H, W, C] or [N, H, W]
    left_out: list[dict] = field(default_factory=list)  # {path, cause, error}: files not read

    def __len__(self) -> int:
        return len(self.labels)

    def item(self, i: int) -> str | np.ndarray:
        """What the encoder needs for sample i: its file path or its pixels."""
        return self.files[i] if self.files is not None else self.images[i]


def square_resize(image, resolution: int):
    """Centre-crop a PIL image to a square and resize it to `resolution` px, anti-aliased.

    `reducing_gap=3` first shrinks very large inputs by an integer factor (fast box filter) and
    leaves at least a 3x Lanczos step, which Pillow documents as indistinguishable from a full
    Lanczos resample. An image that is already `resolution` px square comes back unchanged.
    """
    from PIL import Image

    w, h = image.size
    if (w, h) == (resolution, resolution):
        return image
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return image.resize((resolution, resolution), Image.Resampling.LANCZOS,
                        box=(left, top, left + side, top + side), reducing_gap=3.0)


def _left_out(path: Path, cause: str, error: str) -> dict:
    return {"path": str(path), "cause": cause, "error": error}


def read_image_folder(root: Path) -> ImageSource:
    """An ImageFolder tree: sorted class sub-folders, image files found recursively in each;
    every other file is listed in `left_out` with its cause."""
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"{root}: no class sub-folders found (expected one folder of images "
                        f"per class, e.g. {root}/cat/0001.jpg)")
    names = [d.name for d in class_dirs]
    for mapping_file in (root / "classes.json", root.parent / "classes.json"):
        mapping = json.loads(mapping_file.read_text()) if mapping_file.is_file() else None
        # Only a mapping that names every folder (Imagenette keeps it beside its split folders).
        if isinstance(mapping, dict) and all(n in mapping for n in names):
            names = [str(mapping[n]) for n in names]
            break
    left_out = [_left_out(p, "outside_class_folder", "not in a class sub-folder")
                for p in sorted(root.iterdir())
                if p.is_file() and p.name not in _ROOT_FILES]
    files: list[str] = []
    labels: list[int] = []
    for k, d in enumerate(class_dirs):
        found = []
        for p in sorted(d.rglob("*")):
            if p.is_symlink() and not p.exists():
                left_out.append(_left_out(p, "broken_link", "its target does not exist"))
            elif not p.is_file():
                continue
            elif readable_extension(p):
                found.append(str(p))
            else:
                left_out.append(_left_out(p, "unsupported_extension",
                                          f"{p.suffix or 'no extension'}: not a format Pillow "
                                          "reads"))
        if not found:
            raise DataError(f"{d}: class folder holds no images (no file with an extension of "
                            f"a format Pillow reads, such as .jpg, .png, .tif); remove it or "
                            f"add images")
        files += found
        labels += [k] * len(found)
    return ImageSource("imagefolder", str(root), names, np.asarray(labels, np.int64), files=files,
                       left_out=left_out)


def _unpickle(path: Path) -> dict:
    # pickle runs code from the file. These are trusted local files the user points `pack` at
    # (the CIFAR distribution format is pickle); nothing else in bigan loads pickles.
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except Exception as exc:
        raise DataError(f"{path}: not a readable CIFAR batch ({exc})") from None


_CIFAR_BATCHES = ("data_batch_", "test_batch", "train", "test")


def _is_cifar_batch(path: Path) -> bool:
    return path.is_file() and (path.name.startswith("data_batch_") or path.name in _CIFAR_BATCHES)


def read_cifar(path: Path) -> ImageSource:
    """CIFAR batches: a folder (its `data_batch_*`, else `test_batch`, else `train`) or a file."""
    if path.is_dir():
        batches = sorted(path.glob("data_batch_*"))
        for name in ("test_batch", "train"):
            if not batches and (path / name).is_file():
                batches = [path / name]
        folder = path
    else:
        batches, folder = [path], path.parent
    if not batches:
        raise DataError(f"{path}: no CIFAR batches (data_batch_*, test_batch or train) found")
    images, labels = [], []
    for batch_path in batches:
        batch = _unpickle(batch_path)
        data = np.asarray(batch.get(b"data"))
        y = batch.get(b"labels", batch.get(b"fine_labels"))
        if data.ndim != 2 or data.shape[1] != 3072 or data.dtype != np.uint8 or y is None:
            raise DataError(f"{batch_path}: expected b'data' uint8 [N, 3072] and b'labels'")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(y, np.int64))
    y = np.concatenate(labels)
    names = [str(k) for k in range(int(y.max()) + 1)]
    for meta_name, key in (("batches.meta", b"label_names"), ("meta", b"fine_label_names")):
        if (folder / meta_name).is_file():
            raw = _unpickle(folder / meta_name).get(key)
            if raw:
                names = [n.decode() if isinstance(n, bytes) else str(n) for n in raw]
            break
    return ImageSource("cifar", str(path), names, y,
                       images=np.ascontiguousarray(np.concatenate(images)))


def read_npz(path: Path) -> ImageSource:
    """`images` uint8 [N, H, W(, C)], `labels` [N], optional `class_names` [K] (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise DataError(f"{path}: not a readable .npz without pickled objects ({exc})") from None
    images, labels = arrays.get("images"), arrays.get("labels")
    if images is None or labels is None:
        raise DataError(f"{path}: needs arrays 'images' and 'labels' (has {sorted(arrays)})")
    if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(labels):
        raise DataError(f"{path}: 'images' must be uint8 [N, H, W] or [N, H, W, C] with one label "
                        f"per image (got {images.dtype} {images.shape}, {len(labels)} labels)")
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' must be integers (got {labels.dtype})")
    labels = labels.astype(np.int64)
    if "class_names" in arrays:
        names = [str(n) for n in arrays["class_names"].tolist()]
    else:
        names = [str(k) for k in range(int(labels.max()) + 1 if len(labels) else 0)]
    return ImageSource("npz", str(path), names, labels, images=images)


def read_source(src: str | Path) -> ImageSource:
    """Dispatch on the layout: `.npz` file, CIFAR batch file/folder, else an ImageFolder tree."""
    path = Path(src)
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.suffix == ".npz":
        source = read_npz(path)
    elif _is_cifar_batch(path) or (path.is_dir()
                                   and any(_is_cifar_batch(p) for p in path.iterdir())):
        source = read_cifar(path)
    elif path.is_dir():
        source = read_image_folder(path)
    else:
        raise DataError(f"{path}: not an image folder, a CIFAR batch or a .npz file")
    if len(source) == 0:
        raise DataError(f"{path}: no images found")
    bad = (source.labels < 0) | (source.labels >= len(source.class_names))
    if bad.any():
        raise DataError(f"{path}: label {int(source.labels[bad][0])} is outside "
                        f"0..{len(source.class_names) - 1} (the class names)")
    return source
