"""Launchers that run `bigan.train.trainer.train` somewhere else: a Ray cluster (`ray_job`).

Thin by design: they place processes, wire up the process group and report checkpoints; the
training function itself is the one `bigan train` runs.
"""
