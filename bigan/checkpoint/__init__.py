"""The checkpoint format, read by train, eval, export and the CLI.

`store.py` writes one atomic, checksummed step directory (`manifest.json`, the `latest` pointer,
pruning) and `loading.py` verifies and reads it back, merging sharded parts, over `checks.py` (what
may be saved, checked before anything is written; the step directory's name; the exceptions) and
`durable.py` (fsync, rename into place, sha256 seals); `resume.py` chooses the checkpoint to resume
from and refuses one that does not load or is not finite; `best.py` is the `best` pointer and the
holds that pruning keeps; `sharded.py` runs the collective protocol by which every rank of a job
writes its own part; `weights.py` reads just the model weights of a checkpoint or of a consolidated
`.safetensors` file; `commands.py` is `bigan checkpoint list|verify|consolidate`. Nothing here
knows about the training loop.
"""
