"""The class names an import writes into the manifest: a user's file (`--class-names FILE`, one
name per line in class-id order) or, for a 1,000-class model given none, the ImageNet-1k names
shipped beside this module.

Every released BigGAN with 1,000 classes (BigGAN-PyTorch's ImageNet models, TF-Hub's
BigGAN-deep) was trained on ImageNet-1k with its classes in the standard ILSVRC-2012 index
order, so those names are right for them and make the server's and the page's class search
work; a model with another number of classes gets its ids ("0", "1", ...) as before.
`imagenet_classes.txt` is torchvision's `_IMAGENET_CATEGORIES` list (BSD-3-Clause; provenance
and licence in `imagenet_classes.LICENSE`), read from the package, never downloaded. Its
names are unique, but "Cardigan" (the corgi, 264) and "cardigan" (the sweater, 474) differ only
in case, which the server's name lookup (exact first) handles.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

from bigan.imports.common import ImportFileError

IMAGENET_CLASSES = "imagenet_classes.txt"  # package data of bigan.imports (pyproject.toml)
IMAGENET_NUM_CLASSES = 1000


def imagenet_class_names() -> list[str]:
    """The 1,000 ImageNet-1k class names, index k at position k (torchvision's spelling)."""
    text = resources.files("bigan.imports").joinpath(IMAGENET_CLASSES).read_text(encoding="utf-8")
    return text.splitlines()


def read_class_names(path: str | Path, flag: str = "--class-names") -> list[str]:
    """The names in `path`, one per line in class-id order (surrounding spaces and trailing empty
    lines dropped). An empty line before the last name, or a name given twice, is refused naming
    the line: either would give a class the wrong name or make a name point at two classes."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {str(path)!r} does not exist")
    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError as e:
        raise ImportFileError(f"{flag} {path} is not UTF-8 text ({e.reason} at byte "
                              f"{e.start})") from e
    while lines and not lines[-1]:
        lines.pop()
    seen: dict[str, int] = {}
    for number, name in enumerate(lines, 1):
        if not name:
            raise ImportFileError(f"{flag} {path}: line {number} is empty (one name per line, "
                                  "line k + 1 naming class k)")
        if name in seen:
            raise ImportFileError(f"{flag} {path}: line {number} repeats {name!r} from line "
                                  f"{seen[name]}; class names must be unique")
        seen[name] = number
    return lines


def class_names_for(num_classes: int, given: Sequence[str] | None = None) -> list[str]:
    """`given` when it has one name per class; else (None) ImageNet-1k's names for a 1,000-class
    model and the ids "0".."n-1" for any other. A wrong count is refused naming both counts."""
    if given is not None:
        names = list(given)
        if len(names) != num_classes:
            raise ImportFileError(f"--class-names: {len(names)} class names given but the model "
                                  f"has {num_classes} classes (one name per class, one per line)")
        return names
    if num_classes == IMAGENET_NUM_CLASSES:
        return imagenet_class_names()
    return [str(k) for k in range(num_classes)]
