"""A model repository: every model a server holds, each version with its own engine and batcher.

`ModelRepository.open(path, config)` serves what `path` holds: a single `.onnx` file (one model,
named after the file), or a directory of loose `NAME.onnx` files and Triton's layout
`NAME/VERSION/model.onnx` (VERSION a positive integer), in any mix. A model's default version is
its highest. Every file is checked at open time (`bigan.ort_session`), so a bad one stops the
server with its name before the port is bound.

While serving, `load(name)` re-reads a model's files and `unload(name)` drops it (Triton's
repository extension). A version whose file changed on disk (by sha256) gets a new engine, which
starts before it replaces the old one in the table; the old engine finishes the requests that
were already using it (`use` counts them) and is stopped only when none is left, so a reload never
fails a request in flight. The response cache keys on the file's sha256, so the old file's cached
images are never served for the new one.

Every engine is warmed up (`Engine.warm_up`: each batch bucket run once) before it is served: at
`open`, at `start` for engines given in-process, and by `load` before the new engine enters the
table, so no model reports READY, and no request meets a cold engine, before its warm-up ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from bigan.ort_session import ModelFileError
from serving.core.config import EngineConfig, check_model_name
from serving.core.engine import Engine

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 120.0  # an unloaded engine stops after its last request, or after this


class UnknownModel(LookupError):
    """No such model or version is served; the message lists what is."""


@dataclass(frozen=True)
class ModelFile:
    name: str      # the model's name in URLs
    version: str   # "1" for a loose NAME.onnx or a single file
    path: Path


def scan(root: str | Path, name: str | None = None) -> list[ModelFile]:
    """The model files under `root` (a file, or a repository directory), sorted by name and
    version. `name` renames the model of a single-model repository. Raises ModelFileError when
    there is none, or when a name is given twice (NAME.onnx beside NAME/)."""
    root = Path(root)
    if root.is_file():
        return [ModelFile(name or root.stem, "1", root)]
    if not root.is_dir():
        raise ModelFileError(f"model file or repository {str(root)!r} does not exist; export "
                             "one with `bigan export CKPT --out model.onnx`")
    found = [ModelFile(p.stem, "1", p) for p in sorted(root.glob("*.onnx")) if p.is_file()]
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        for version in sorted(v for v in sub.iterdir() if v.is_dir() and v.name.isdigit()):
            if (version / "model.onnx").is_file() and int(version.name) > 0:
                found.append(ModelFile(sub.name, str(int(version.name)), version / "model.onnx"))
    if not found:
        raise ModelFileError(f"{str(root)!r} holds no model: put NAME.onnx files or Triton's "
                             "NAME/VERSION/model.onnx in it, or pass one .onnx file")
    kinds: dict[str, set[str]] = {}
    for f in found:
        kinds.setdefault(f.name, set()).add("loose" if f.path.parent == root else "layout")
    if twice := sorted(n for n, k in kinds.items() if len(k) > 1):
        raise ModelFileError(f"{str(root)!r} names model {twice[0]!r} twice ({twice[0]}.onnx and "
                             f"{twice[0]}/); keep one")
    if name is not None:
        if len(kinds) > 1:
            raise ModelFileError(f"a name ({name!r}) can be given only to a repository of one "
                                 f"model; {str(root)!r} holds {sorted(kinds)}")
        found = [ModelFile(name, f.version, f.path) for f in found]
    for f in found:
        try:
            check_model_name(f.name)
        except ValueError as e:
            raise ModelFileError(f"{str(f.path)!r}: {e}; rename it") from None
    return sorted(found, key=lambda f: (f.name, int(f.version)))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ModelRepository:
    """name -> version -> Engine, with lookups for the routes and Triton-style load/unload."""

    def __init__(self, engines: list[Engine], root: Path | None = None,
                 config: EngineConfig | None = None, name: str | None = None):
        self.root, self.config, self.rename = root, config or EngineConfig(), name
        self.models: dict[str, dict[str, Engine]] = {}
        for engine in engines:
            self.models.setdefault(engine.name, {})[engine.version] = engine
        self.on_engine: Callable[[Engine], None] | None = None  # set by the app (metrics hook)
        self._lock = asyncio.Lock()
        self._draining: dict[asyncio.Task, Engine] = {}  # drain task -> the engine it stops

    @classmethod
    def open(cls, root: str | Path, config: EngineConfig | None = None,
             name: str | None = None, warm: bool = True) -> ModelRepository:
        """Open every model under `root` (see `scan`) and warm each up (`warm=False`: a check
        only; `start` warms them); raises ModelFileError naming a bad file."""
        config = config or EngineConfig()
        engines = [Engine(f.path, config, f.name, version=f.version) for f in scan(root, name)]
        for engine in engines if warm else []:  # before any port is bound, lifespan or not
            engine.warm_up()
        return cls(engines, Path(root), config, name)

    # --- lookups -------------------------------------------------------------------------------

    def engines(self) -> list[Engine]:
        return [e for versions in self.models.values() for e in versions.values()]

    def versions(self, name: str) -> list[str]:
        return sorted(self.models.get(name, {}), key=int)

    @property
    def ready(self) -> bool:
        return bool(self.models) and all(e.ready for e in self.engines())

    def get(self, name: str | None = None, version: str | None = None) -> Engine:
        """The engine of model `name` (None: the only model) at `version` (None: the highest)."""
        if name is None:
            if len(self.models) != 1:
                raise UnknownModel(f"this server holds {len(self.models)} models "
                                   f"({', '.join(map(repr, sorted(self.models)))}); name one")
            name = next(iter(self.models))
        versions = self.models.get(name)
        if not versions:
            names = ", ".join(repr(n) for n in sorted(self.models)) or "no models"
            raise UnknownModel(f"unknown model {str(name)[:80]!r}; this server serves {names}")
        if version is None:
            return versions[self.versions(name)[-1]]
        if version not in versions:
            raise UnknownModel(f"model {name!r} has version(s) {', '.join(self.versions(name))}, "
                               f"not {str(version)[:40]!r}")
        return versions[version]

    @contextlib.contextmanager
    def use(self, name: str | None = None, version: str | None = None) -> Iterator[Engine]:
        """`get`, holding the engine for the block: a reload or unload waits for the block."""
        engine = self.get(name, version)
        engine.users += 1
        try:
            yield engine
        finally:
            engine.users -= 1

    def index(self) -> list[dict]:
        """Triton's repository index: every model version on disk or loaded, with its state."""
        on_disk = set()
        if self.root is not None:
            try:
                on_disk = {(f.name, f.version) for f in scan(self.root, self.rename)}
            except ModelFileError:
                pass
        loaded = {(e.name, e.version) for e in self.engines()}
        out = []
        for name, version in sorted(on_disk | loaded, key=lambda nv: (nv[0], int(nv[1]))):
            if (name, version) in loaded:
                engine = self.models[name][version]
                out.append({"name": name, "version": version,
                            "state": "READY" if engine.ready else "UNAVAILABLE"})
            else:
                out.append({"name": name, "version": version, "state": "UNAVAILABLE",
                            "reason": "unloaded"})
        return out

    # --- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        for engine in self.engines():
            if self.on_engine is not None:
                self.on_engine(engine)
            if not engine.warmed:
                await asyncio.to_thread(engine.warm_up)
            await engine.start()

    async def stop(self) -> None:
        """Stop every engine, those still draining after a reload or unload included: their
        waits are cancelled and the engines stopped here, so no batcher outlives the server."""
        for task in list(self._draining):
            task.cancel()
        draining, self._draining = self._draining, {}
        for engine in [*self.engines(), *draining.values()]:
            await engine.stop()

    async def load(self, name: str) -> None:
        """(Re)load model `name` from disk: new or changed versions get new engines, removed ones
        are unloaded, unchanged ones keep serving; a model whose files are all gone is unloaded
        (as Triton does), then UnknownModel. Raises UnknownModel or ModelFileError, whose message
        names files relative to the repository: it goes to clients, who have no business knowing
        the server's folders (the log keeps the full message)."""
        try:
            await self._load(name)
        except ModelFileError as e:
            log.warning("loading model %s failed: %s", name[:80], e)
            raise ModelFileError(self._hide_root(str(e))) from None

    def _hide_root(self, message: str) -> str:
        """`message` with the repository's folder left out of the paths it names."""
        if self.root is None:
            return message
        roots = {str(self.root), str(self.root.absolute()), str(self.root.resolve())}
        for root in sorted(roots, key=len, reverse=True):
            message = message.replace(f"'{root}'", "the repository")
            message = message.replace(root + os.sep, "").replace(root, "the repository")
        return message

    async def _load(self, name: str) -> None:
        if self.root is None:
            raise ModelFileError("this server was given its models in-process, not a repository "
                                 "path: there is nothing to load them from")
        async with self._lock:
            files = [f for f in await asyncio.to_thread(scan, self.root, self.rename)
                     if f.name == name]
            if not files:
                if name in self.models:  # its files were deleted: stop serving it
                    self._drain(list(self.models.pop(name).values()))
                    log.info("unloaded model %s: its files are gone from %s", name, self.root)
                    raise UnknownModel(f"model {name!r} is no longer in the repository; it is "
                                       "unloaded")
                raise UnknownModel(f"no model {name[:80]!r} in the repository")
            current = self.models.get(name, {})
            fresh: dict[str, Engine] = {}
            try:
                for f in files:
                    old = current.get(f.version)
                    if old is not None and old.path == f.path and (
                            await asyncio.to_thread(file_sha256, f.path)) == old.sha256:
                        fresh[f.version] = old
                        continue
                    engine = await asyncio.to_thread(Engine, f.path, self.config, f.name,
                                                     version=f.version)
                    fresh[f.version] = engine  # stopped below if a later version fails
                    await asyncio.to_thread(engine.warm_up)
                    if self.on_engine is not None:
                        self.on_engine(engine)
                    await engine.start()
                    log.info("%s model %s version %s from %s", "reloaded" if old else "loaded",
                             name, f.version, f.path)
            except BaseException:  # one bad file: the model keeps serving what it served
                for engine in fresh.values():
                    if engine not in current.values():
                        await engine.stop()
                raise
            self.models[name] = fresh
            self._drain([e for v, e in current.items() if fresh.get(v) is not e])

    async def unload(self, name: str) -> None:
        """Stop serving model `name`; its requests in flight finish first."""
        async with self._lock:
            versions = self.models.pop(name, None)
            if versions is None:
                raise UnknownModel(f"model {name[:80]!r} is not loaded")
            self._drain(list(versions.values()))
            log.info("unloaded model %s", name)

    def _drain(self, engines: list[Engine]) -> None:
        for engine in engines:
            task = asyncio.create_task(_stop_when_idle(engine))
            self._draining[task] = engine
            task.add_done_callback(lambda done: self._draining.pop(done, None))


async def _stop_when_idle(engine: Engine) -> None:
    """Stop `engine` once no request uses it any more (or after DRAIN_TIMEOUT_S)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DRAIN_TIMEOUT_S
    while (engine.users or engine.batcher.depth) and loop.time() < deadline:
        await asyncio.sleep(0.01)
    await engine.stop()
