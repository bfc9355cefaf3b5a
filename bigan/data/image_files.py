"""Image files as a photo viewer shows them: which files `bigan data pack` reads, and how.

A folder of real photographs holds phone pictures stored sideways with an EXIF rotate tag,
16-bit scans, palette GIFs with a transparent colour, CMYK JPEGs from print workflows, animated
GIFs and WebPs, multi-page TIFFs. `viewer_rgb` turns any image Pillow opens into the 8-bit RGB
picture a viewer displays, and names what it had to do:

- `rotated_by_exif`: the EXIF (or XMP) orientation is applied (`ImageOps.exif_transpose`);
- `first_frame`: an animated or multi-page file (GIF, APNG, WebP, TIFF, MPO ...) gives frame 0,
  the frame viewers show as its still and thumbnail;
- `high_bit_depth_scaled`: grey levels deeper than 8 bits are scaled, never clipped (Pillow's
  `convert` clips, so a 16-bit PNG came out almost all white): 16-bit (`I;16*`) by 255/65535;
  32-bit integer (`I`, which Pillow also uses for 16-bit PGM/PNG) the same when every value is
  within 0..65535, else stretched from the image's own min..max; float (`F`) read as 0..1 (the
  scikit-image convention), stretched from min..max when outside that. 16-bit RGB(A) files need
  nothing here: Pillow keeps each channel's high byte (v >> 8, within one level of scaling);
- `alpha_flattened`: transparency (RGBA, LA, PA, a palette or colour key with `transparency`)
  is composited over white, the page colour viewers and browsers show behind it, instead of
  dropping alpha (which reveals whatever colour the transparent pixels happen to store);
- `converted_to_rgb`: any other mode (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX) by Pillow's convert.

`readable_extension(path)` is the gate for folder sources: every extension Pillow registers for
a format it can open (`Image.registered_extensions()`), less the stubs that need a plug-in
(BUFR, GRIB, HDF5, WMF) and MPEG, whose reader parses the header but decodes no pixels (it
would pack a black frame). Colour profiles (ICC) are not converted: images are taken as sRGB.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

# Header-only readers: Pillow identifies these files but yields no real pixels.
_NO_PIXELS = frozenset({"MPEG"})
_WHITE = (255, 255, 255, 255)
_ORIENTATION = 0x0112  # EXIF tag; 1 = as stored, 2..8 = mirror and/or rotate


@functools.cache
def readable_extensions() -> frozenset[str]:
    """Lower-case extensions ('.tif', '.gif', ...) of the formats Pillow opens and decodes."""
    from PIL import Image, ImageFile

    Image.init()
    decodes = {fmt for fmt, (factory, _) in Image.OPEN.items()
               if fmt not in _NO_PIXELS and not (isinstance(factory, type)
                                                 and issubclass(factory, ImageFile.StubImageFile))}
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items()
                     if fmt in decodes)


def readable_extension(path: str | Path) -> bool:
    return Path(path).suffix.lower() in readable_extensions()


def frame_count(image) -> int:
    return int(getattr(image, "n_frames", 1) or 1)


def exif_orientation(image) -> int:
    """The EXIF/XMP orientation tag (1 when absent or malformed)."""
    try:
        value = int(image.getexif().get(_ORIENTATION, 1))
    except Exception:  # a damaged EXIF block must not lose the picture; treat it as upright
        return 1
    return value if 1 <= value <= 8 else 1


def _scale_to_8bit(values: np.ndarray, full_scale: float) -> np.ndarray:
    """Grey levels in 0..full_scale -> uint8 by v * 255 / full_scale, rounded; values outside
    that range are stretched from the image's own min..max instead (never clipped)."""
    v = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(v.min(initial=0.0)), float(v.max(initial=0.0))
    if low < 0 or high > full_scale:
        v, full_scale = v - low, (high - low) or 1.0
    return np.rint(v * (255.0 / full_scale)).clip(0, 255).astype(np.uint8)


def _grey_levels_to_l(image):
    """An I;16*, I or F image as an 8-bit L image (see the module docstring for the scales)."""
    from PIL import Image

    values = np.asarray(image)
    full_scale = 1.0 if image.mode == "F" else 65535.0
    return Image.fromarray(_scale_to_8bit(values, full_scale), mode="L")


def viewer_rgb(image) -> tuple:
    """A loaded PIL image -> (8-bit RGB PIL image as a viewer shows it, tuple of note names).

    The notes are the names listed in the module docstring, in the order applied. An RGB image
    without orientation tag, transparency or extra frames comes back as the same object.
    """
    from PIL import Image, ImageOps

    notes: list[str] = []
    if frame_count(image) > 1:
        notes.append("first_frame")  # Image.open leaves a file on frame 0
    if exif_orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
        notes.append("rotated_by_exif")
    if image.mode != "RGB" or image.has_transparency_data:
        notes.append("converted_to_rgb")
    if image.mode == "F" or image.mode == "I" or image.mode.startswith("I;16"):
        image = _grey_levels_to_l(image)
        notes.append("high_bit_depth_scaled")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            rgba = Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba)
            notes.append("alpha_flattened")
        image = rgba
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image, tuple(notes)
