"""The driver's cached files, for the nodes of a cluster that do not share its disk: sent through Ray's object store.

Trials and the work done once (`tuning.driver_tasks`, the retraining) open the decoded store, the
cached features and the weights by the driver's paths. On one node, or where every node mounts the
cache, those paths are there. Elsewhere `Shipment.unpack` writes each at the same path on the node
it runs on, once, from bytes the driver put into Ray's object store (`ship`). What is shipped is a
cache entry (`carclf.cache`: a folder named by its content, written whole) or a weights file, so an
entry already on the node is the same entry, and nothing stale is reused: like a build, an
entry is unpacked into a partial folder and renamed into place.

The other way, a task that builds an entry (the synthetic backbone, the cached features, the
transfer probe) on a node other than the driver's returns the entry's files with its result
(`on_node`), and the driver writes them into its own cache (`keep`).

Nothing is shipped or returned where every node sees the driver's cache (one node, a shared
filesystem: `tuning.cluster.nodes_not_seeing` tells).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ray

from carclf.files import atomic_path, partial_path


def pack(path: Path) -> dict[str, bytes]:
    """A cache entry folder's files (relative name → bytes), or a file's bytes under the name ""."""
    path = Path(path)
    if path.is_dir():
        return {str(file.relative_to(path)): file.read_bytes() for file in sorted(path.rglob("*")) if file.is_file()}
    return {"": path.read_bytes()}


def present(path: str | Path, sizes: dict[str, int]) -> bool:
    """Whether the entry (or file) is already at `path` on this node, each file of the size given."""
    files = {name: Path(path) / name if name else Path(path) for name in sizes}
    return all(file.is_file() and file.stat().st_size == sizes[name] for name, file in files.items())


def keep(path: str | Path, files: dict[str, bytes]) -> None:
    """Write a packed entry (or file) at `path` on this node, unless it is there: a folder built beside it and renamed
    into place whole, as `carclf.cache` builds one; a file through `atomic_path`."""
    root = Path(path)
    if present(root, {name: len(data) for name, data in files.items()}):
        return
    if "" in files:
        with atomic_path(root) as partial:
            partial.write_bytes(files[""])
        return
    partial = partial_path(root)
    shutil.rmtree(partial, ignore_errors=True)
    for name, data in files.items():
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        (partial / name).write_bytes(data)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(partial, root)
    except OSError:  # another process of this node put the same entry in place first
        shutil.rmtree(partial, ignore_errors=True)
        if not present(root, {name: len(data) for name, data in files.items()}):
            raise


@dataclass(frozen=True)
class Shipped:
    """One entry (or file) of the driver's: its path, its files' sizes, and its files in Ray's object store."""

    path: str
    sizes: dict[str, int]
    files: ray.ObjectRef


@dataclass(frozen=True)
class Shipment:
    """Cache entries and files of the driver's for the nodes that do not see its cache; `home` is the driver's node,
    None where every node sees its cache (nothing is shipped)."""

    home: str | None = None
    entries: tuple[Shipped, ...] = ()

    @classmethod
    def to_nodes(cls, needed: bool) -> Shipment:
        """An empty shipment from this driver's node, or none at all where no node `needed` the driver's cache."""
        return cls(ray.get_runtime_context().get_node_id() if needed else None)

    def adding(self, paths: list[Path | None]) -> Shipment:
        """The shipment with the entries (folders) and files at `paths` put into Ray's object store (None and missing
        paths left out); itself where nothing is shipped."""
        if self.home is None:
            return self
        packed = {str(path): pack(Path(path)) for path in paths if path is not None and Path(path).exists()}
        return Shipment(self.home, self.entries + tuple(Shipped(path, {name: len(data) for name, data in files.items()},
                                                                ray.put(files)) for path, files in packed.items()))

    def unpack(self) -> None:
        """Put every shipped entry at its path on this node where it is missing; one already there is not fetched."""
        for entry in self.entries:
            if not present(entry.path, entry.sizes):
                keep(entry.path, ray.get(entry.files))


def weights_entry(weights: str) -> Path | None:
    """What to ship of `model.weights`: its cache entry's folder (the synthetic backbone's), the file itself (ImageNet's
    or the user's), or None (random weights)."""
    path = Path(weights)
    if not path.is_file():
        return None
    return path.parent if (path.parent / "manifest.json").is_file() else path


def on_node(function: Callable[..., Any], shipment: Shipment, product: Path | None,
            *args: Any) -> tuple[Any, tuple[str, dict[str, bytes]] | None]:
    """Run as a Ray task: `function(*args)` after the shipment is unpacked here; with its result, the cache entry it
    built (`product`) packed for the driver when the driver does not see this node's cache, else None."""
    shipment.unpack()
    result = function(*args)
    elsewhere = shipment.home not in (None, ray.get_runtime_context().get_node_id())
    built = elsewhere and product is not None and Path(product).exists()
    return result, (str(product), pack(product)) if built else None


def returned(result: tuple[Any, tuple[str, dict[str, bytes]] | None]) -> Any:
    """The result of an `on_node` task, its product written into the driver's cache first."""
    value, product = result
    if product is not None:
        keep(*product)
    return value
