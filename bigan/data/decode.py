"""From a shard's sample bytes to training rows and batches: labels checked, images decoded,
resized and flipped (a coin keyed by the sample's position), bad samples turned into skip
events with their cause, rows collated into the loader's batch dict.

The loader's pipeline stage `decode_samples` and its `collate` (bigan/data/loader.py, which
documents the batch); `decode_image` and `IMAGE_KEYS` are shared with the evaluator's real-image
reader. Never raises on bad data: that is counted, not fatal.
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections import Counter
from collections.abc import Iterator

import numpy as np
import torch

from bigan.data.sources import IMAGE_EXTENSIONS, square_resize

IMAGE_KEYS = tuple(e.lstrip(".") for e in IMAGE_EXTENSIONS)  # sample keys holding an image (eval reads them too)
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"BM", b"GIF8", b"RIFF")


def flip_coin(seed: int, epoch: int, shard: int, offset: int) -> bool:
    """A fair coin keyed by the sample's position: the same image flips the same way on resume."""
    key = struct.pack("<4q", seed, epoch, shard, offset)
    return bool(hashlib.blake2b(key, digest_size=1, person=b"bigan-flip").digest()[0] & 1)


def _label(sample: dict, num_classes: int) -> tuple[int, str | None]:
    if "cls" not in sample:
        return -1, "missing_label"
    try:
        label = int(sample["cls"].decode("ascii").strip())
    except (UnicodeDecodeError, ValueError, AttributeError):
        return -1, "bad_label"
    return label, None if 0 <= label < num_classes else "label_out_of_range"


def decode_image(data: bytes, resolution: int,
                 flip: bool = False) -> tuple[np.ndarray | None, str | None]:
    """Image bytes -> (uint8 [R, R, 3], None) or (None, skip cause). Never raises."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            rgb = image.convert("RGB") if image.mode != "RGB" else image
            rgb = square_resize(rgb, resolution)
            if flip:  # in Pillow: a NumPy copy of a mirrored HWC view is ~50x slower
                rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            return np.asarray(rgb), None
    except UnidentifiedImageError:
        return None, "corrupt_image" if data.startswith(_SIGNATURES) else "not_image"
    except Exception as exc:  # bad data must never stop training
        return None, "truncated_image" if "truncated" in str(exc).lower() else "corrupt_image"


def decode_samples(events: Iterator[dict], plan) -> Iterator[dict]:
    """Samples -> {image, label, __pos__, __key__} or {__skip__: cause, __pos__}; other events
    (`__done__`, `__io__`) pass through. plan: the loader's `_Plan` (seed, resolution,
    num_classes, unconditional, flip)."""
    for event in events:
        if "__pos__" not in event:  # __done__, __io__
            yield event
            continue
        pos = event["__pos__"]
        label, cause = _label(event, plan.num_classes)
        image = None
        if cause is None:
            data = next((event[k] for k in IMAGE_KEYS if k in event), None)
            flip = plan.flip and flip_coin(plan.seed, *pos)
            image, cause = ((None, "missing_image") if data is None
                            else decode_image(data, plan.resolution, flip))
        if cause is not None:
            yield {"__skip__": cause, "__pos__": pos}
            continue
        yield {"image": image, "label": 0 if plan.unconditional else label, "__pos__": pos,
               "__key__": event.get("__key__", "")}


def collate(rows: list[dict], progress: dict, skipped: Counter, dtype: str) -> dict:
    n, (h, w, _) = len(rows), rows[0]["image"].shape
    if dtype == "uint8":
        # NHWC memory seen as NCHW (channels_last): a plain copy per image, no transposition on
        # the host; the accelerator converts (and GPUs prefer channels_last convolutions).
        nhwc = torch.empty((n, h, w, 3), dtype=torch.uint8)
        pixels = nhwc.numpy()
        for i, row in enumerate(rows):
            pixels[i] = row["image"]
        image = nhwc.permute(0, 3, 1, 2)
    else:
        # HWC -> CHW -> [-1, 1] image by image straight into the batch: each image's float copy
        # stays in cache between the two steps, half the cost of converting the whole uint8
        # batch afterwards (measured: float output still costs ~0.15 ms per 224 px image).
        image = torch.empty((n, 3, h, w), dtype=torch.float32)
        pixels = image.numpy()
        for i, row in enumerate(rows):
            np.multiply(row["image"].transpose(2, 0, 1), np.float32(1 / 127.5), out=pixels[i])
            pixels[i] -= 1.0
    pos = torch.tensor([r["__pos__"] for r in rows], dtype=torch.int64)
    return {
        "image": image, "label": torch.tensor([r["label"] for r in rows], dtype=torch.int64),
        "epoch": pos[:, 0], "shard": pos[:, 1], "offset": pos[:, 2],
        "key": [r["__key__"] for r in rows],
        "progress": torch.tensor([[e, k, n] for (e, k), n in progress.items()],
                                 dtype=torch.int64).reshape(-1, 3),
        "skipped": {cause: n for cause, n in skipped.items() if n},
    }
