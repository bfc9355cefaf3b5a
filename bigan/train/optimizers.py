"""The two Adam optimizers of a GAN, built one way for the trainer, the benches and the tests,
and the rule for their settings on resume.

On resume the config's Adam settings win: `apply_settings` puts `optim.g_lr`, `optim.d_lr`,
`optim.betas` and `optim.eps` on the restored optimizers, which keep their moments and step
counts. That is what a user means by editing the lrs and resuming (the divergence message tells
them to do exactly that), and it keeps `config.yaml`, the next checkpoint's manifest and the
optimizers in agreement. The curriculum still scales the lrs each step (lr decay, ProGAN phases).
"""

from __future__ import annotations

import torch
from torch import nn

from bigan.config import OptimConfig

# The OptimConfig fields that live in the optimizers' parameter groups.
SETTINGS = ("g_lr", "d_lr", "betas", "eps")
# How Adam's step runs (speed.optimizer): torch.optim.Adam's arguments for each implementation.
# "default" lets torch choose (for-loop on CPU, foreach on CUDA). Same update, other op order.
IMPLEMENTATIONS = {"default": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True},
                   "fused": {"fused": True}}


def build_optimizers(G: nn.Module, D: nn.Module, optim: OptimConfig,
                     impl: str = "default") -> tuple[torch.optim.Adam, torch.optim.Adam]:
    """(Adam over G's parameters at optim.g_lr, Adam over D's at optim.d_lr), both with
    optim.betas and optim.eps (BigGAN: betas (0, 0.999), eps 1e-6; TTUR lrs 1e-4 / 4e-4), run
    by implementation `impl` (one of IMPLEMENTATIONS; `bigan.train.speed` picks it)."""
    betas, kwargs = tuple(float(b) for b in optim.betas), IMPLEMENTATIONS[impl]
    return (torch.optim.Adam(G.parameters(), lr=optim.g_lr, betas=betas, eps=optim.eps, **kwargs),
            torch.optim.Adam(D.parameters(), lr=optim.d_lr, betas=betas, eps=optim.eps, **kwargs))


def apply_settings(opt_G, opt_D, optim: OptimConfig) -> None:
    """Set optim's lr (g_lr for G, d_lr for D), betas and eps on every parameter group of both
    optimizers (torch's, or DeepSpeed's ZeRO optimizer, whose groups are its inner Adam's);
    Adam's moments and step counts are untouched. A restored torch optimizer also keeps the
    implementation it was built with (`foreach`/`fused`, which `load_state_dict` would take from
    the checkpoint), with its step counts where a fused step needs them (on the parameter's device)."""
    for opt, lr in ((opt_G, optim.g_lr), (opt_D, optim.d_lr)):
        built = {k: v for k, v in getattr(opt, "defaults", {}).items() if k in ("foreach", "fused")}
        states = getattr(opt, "state", {})  # DeepSpeed's engines keep theirs inside
        for group in opt.param_groups:
            group.update(lr=lr, betas=tuple(optim.betas), eps=optim.eps, **built)
            if group.get("fused") or group.get("capturable"):
                for p in group["params"]:
                    state = states.get(p, {})
                    if torch.is_tensor(state.get("step")):
                        state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def changed_settings(before: OptimConfig, now: OptimConfig) -> list[str]:
    """'optim.g_lr 0.0004 -> 0.0001' for each optimizer setting that differs between the config
    a checkpoint was trained with and the config resuming it."""
    return [f"optim.{k} {getattr(before, k)} -> {getattr(now, k)}" for k in SETTINGS
            if list(_seq(getattr(before, k))) != list(_seq(getattr(now, k)))]


def _seq(value) -> tuple:
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)
