"""What every importer of released weights shares: reading a weights file without running its
code, comparing it with the tensors a model needs, and writing the result as a bigan checkpoint.

`read_state_dict(path)` reads a PyTorch file through `torch.load(weights_only=True)` (or a
`.safetensors` file) and refuses, naming the reason, a file that needs pickled code or holds
anything but a flat mapping of names to tensors. `check_tensors(expected, found, source)` raises
on the first key (in the model's order) that is missing or has another shape, naming both
shapes, then on keys the model has no place for. `write_checkpoint(out, model_cfg, G_state, ...)`
writes `<out>/checkpoints/step-00000000/` through `bigan.checkpoint.store.save_checkpoint` with
the EMA generator under `G_ema` and the config in the manifest, which is what
`bigan.generation.load_ema_generator` reads: `bigan sample/export/eval OUT` then take it as a
run directory. The format-specific key maps live beside this module (`biggan_pytorch.py`,
`hf_biggan.py`).
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import torch

from bigan.config import Config, DataConfig, ModelConfig


@dataclass
class ImportReport:
    """What `convert` wrote and found, for `bigan import`'s summary."""
    checkpoint: Path        # the step directory written
    source: Path            # the weights file read
    model: ModelConfig      # the settings read or inferred from it
    parameters: int         # parameters of the imported generator
    class_names: list[str]  # as written to the manifest, class k at index k


class ImportFileError(ValueError):
    """A file cannot be imported as the format asked for; the message names the file, the key
    (and shapes) at fault and what to pass instead."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a state-dict file, never unpickling code.

    `.safetensors` files are read with safetensors; anything else with
    `torch.load(map_location="cpu", weights_only=True)`, which rebuilds tensors and plain
    containers only. A file that needs a pickled class or function (e.g. BigGAN-PyTorch's
    `state_dict.pth`, whose `config` holds `nn.ReLU` objects) is refused with torch's reason.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    if path.suffix == ".safetensors":
        import safetensors.torch

        try:
            return dict(safetensors.torch.load_file(str(path)))
        except Exception as e:
            raise ImportFileError(f"{path} is not a readable safetensors file ({e})") from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # Only "Unsupported global" means a pickled class or function; random or damaged bytes
        # fail weights-only loading too ("Unsupported operand", "invalid load key").
        if "unsupported global" not in str(e).lower():
            raise ImportFileError(f"{path} is not a readable PyTorch file "
                                  f"({_unpickler_reason(e)})") from e
        raise ImportFileError(
            f"{path} needs pickled code to load ({_unpickler_reason(e)}); bigan never runs code "
            "from a weights file: pass a file holding only a state dict (e.g. G_ema.pth, not "
            "state_dict.pth), or re-save one with torch.save(model.state_dict(), ...) where you "
            "trust it") from e
    except Exception as e:  # not a torch file at all, or a truncated one
        raise ImportFileError(f"{path} is not a readable PyTorch file ({type(e).__name__}: {e})") \
            from e
    return _as_state_dict(obj, path)


def _unpickler_reason(e: Exception) -> str:
    """The line of torch's weights-only refusal that says what was refused ("Unsupported
    global: GLOBAL torch.nn.modules.activation.ReLU ..."), without its advice to disable it."""
    text = str(e)
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1]
    return text.strip().split(". ")[0].splitlines()[0].strip() or type(e).__name__


def _as_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping):
        raise ImportFileError(f"{path} holds a {type(obj).__name__}, not a state dict (a mapping "
                              "of parameter names to tensors)")
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise ImportFileError(
                f"{path} is not a state dict: key {key!r} holds a {type(value).__name__}, not a "
                "tensor (a training-state file? pass the generator's weights file)")
    return dict(obj)


def shape(t: torch.Tensor | torch.Size | Sequence[int]) -> list[int]:
    return list(t.shape if isinstance(t, torch.Tensor) else t)


def check_tensors(expected: Mapping[str, Sequence[int]], found: Mapping[str, torch.Tensor],
                  source: str | Path, ignored: Sequence[str] = ()) -> None:
    """Raise ImportFileError at the first key of `expected` (name -> shape, in the model's order)
    that `found` lacks or holds with another shape, naming both shapes; then at the first key of
    `found` that is neither expected nor in `ignored` (names the importer knowingly drops)."""
    for key, want in expected.items():
        if key not in found:
            raise ImportFileError(f"{source}: missing key {key!r} (the model expects shape "
                                  f"{shape(want)}); is the file from another architecture or "
                                  "settings?")
        if shape(found[key]) != shape(want):
            raise ImportFileError(f"{source}: key {key!r} has shape {shape(found[key])} in the "
                                  f"file but the model expects {shape(want)}")
    extra = [k for k in found if k not in expected and k not in set(ignored)]
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise ImportFileError(f"{source}: unexpected key {extra[0]!r}{more} with shape "
                              f"{shape(found[extra[0]])}: the model has no place for it")


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_checkpoint(out: str | Path, model_cfg: ModelConfig, G_state: dict[str, torch.Tensor],
                     class_names: Sequence[str] | None, source: dict,
                     z_sampling: str | None = None) -> Path:
    """Write `<out>/checkpoints/step-00000000/` holding `G_state` as the EMA generator, with the
    config (model = `model_cfg`) and class names in the manifest; return the step directory.
    `class_names` None means ImageNet-1k's names for 1,000 classes, else the ids
    (`bigan.imports.class_names.class_names_for`).

    `out` must not exist or be empty, so an import never mixes with or replaces a run. `source`
    (format, file, sha256, settings) is recorded in the manifest under `imported_from`;
    `z_sampling` (how its authors draw z, `bigan.onnx_metadata.Z_SAMPLINGS`) under `z_sampling`,
    which sampling and export read (None: bigan's default, no key). The data
    section says `synthetic` only because a config must name some data; fine-tuning sets it.
    """
    from bigan.checkpoint.store import save_checkpoint
    from bigan.config import dump_config
    from bigan.imports.class_names import class_names_for  # imports ImportFileError from here

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ImportFileError(f"--out {out} already exists and is not empty: choose a new "
                              "directory (an import never writes into an existing run)")
    names = class_names_for(model_cfg.num_classes, class_names)
    cfg = Config(model=model_cfg, data=DataConfig(source="synthetic"))
    cfg.validate()
    extra = {"cur_nimg": 0, "class_names": names, "config": cfg.to_dict(),
             "imported_from": source}
    if z_sampling is not None:
        extra["z_sampling"] = z_sampling
    return save_checkpoint(out / "checkpoints", 0, {"G_ema": G_state}, {}, dump_config(cfg),
                           extra=extra)
