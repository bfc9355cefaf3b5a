"""Whether a checkpoint's weights fit the model its manifest describes.

A checkpoint whose files all pass their sha256 check can still hold weights of another shape than
the config in its manifest builds (a file copied in from another run and resealed, a hand-edited
manifest): loading it would fail deep inside `load_state_dict` with a size-mismatch traceback.
`check_model_shapes` compares every tensor's name and shape with the model built from the
manifest's `config` on the meta device (no memory, no initialisation), so `bigan checkpoint
verify` reports it and `--resume auto` skips it like any other damaged checkpoint. Manifests
without a config (checkpoints written by hand or by tests) are not checked.
"""

from __future__ import annotations

import functools
import json
import warnings
from pathlib import Path
from typing import Mapping

import torch

from bigan.checkpoint.checks import CheckpointError

Shapes = dict[str, tuple[int, ...]]
_GENERATOR = ("G", "G_ema")  # the state dicts that hold a generator; "D" holds the discriminator


def check_model_shapes(path: Path, manifest: dict, models: Mapping[str, Mapping[str, torch.Tensor]]
                       ) -> None:
    """Raise CheckpointError naming the first tensors of `models` ("G", "G_ema", "D" -> state
    dict) whose names or shapes differ from the model of `manifest["config"]`."""
    config = manifest.get("config")
    if not isinstance(config, dict) or not (set(models) & {*_GENERATOR, "D"}):
        return
    try:
        G, D = expected_shapes(json.dumps(config, sort_keys=True))
    except (ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise CheckpointError(f"{path / 'manifest.json'} holds a config that does not describe a "
                              f"model ({e}); the checkpoint is damaged") from e
    expected = {name: G for name in _GENERATOR} | ({"D": D} if D is not None else {})
    problems = [p for name, state in models.items() if name in expected
                for p in shape_problems(name, expected[name], state)]
    if problems:
        more = f" (and {len(problems) - 2} more)" if len(problems) > 2 else ""
        raise CheckpointError(f"{path}: {'; '.join(problems[:2])}{more}: the weights do not fit "
                              "the model of the config in its manifest, so they came from another "
                              "run or were altered; resume from another checkpoint")


def shape_problems(name: str, expected: Shapes, state: Mapping[str, torch.Tensor]) -> list[str]:
    """One phrase per tensor of `state` missing from, extra to, or shaped unlike `expected`."""
    problems = [f"{name} lacks {key} {list(shape)}" for key, shape in expected.items()
                if key not in state]
    problems += [f"{name} holds {key}, which the model does not have" for key in state
                 if key not in expected]
    problems += [f"{name}/{key} has shape {list(t.shape)} but the model's is {list(expected[key])}"
                 for key, t in state.items()
                 if key in expected and tuple(t.shape) != expected[key]]
    return problems


@functools.lru_cache(maxsize=8)
def expected_shapes(config_json: str) -> tuple[Shapes, Shapes | None]:
    """(G's, D's) tensor shapes by state-dict key for the config given as JSON (the cache key:
    `--resume auto` checks several checkpoints of one config). D's are None when D cannot be
    built here (the projected D without its extra installed): it is then not checked."""
    from bigan import models
    from bigan.config import ConfigError, config_from_dict

    cfg = config_from_dict(json.loads(config_json)).model
    with warnings.catch_warnings(), models.on_meta():
        # The projected D loads its frozen EfficientNet's weights into the meta tensors, a no-op
        # torch warns about once per tensor.
        warnings.simplefilter("ignore")
        try:
            G, D = models.build(cfg)
        except ConfigError:
            G, D = models.build_generator(cfg), None
    return (_shapes(G), None if D is None else _shapes(D))


def _shapes(module: torch.nn.Module) -> Shapes:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}
