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


@dataclass(frozen=True)
class Packed:
    """One cache entry folder (or one file) as its files: relative name → bytes."""

    path: str
    folder: bool
    files: dict[str, bytes]


def pack(path: Path) -> Packed:
    path = Path(path)
    if path.is_dir():
        return Packed(str(path), True, {str(file.relative_to(path)): file.read_bytes()
                                        for file in sorted(path.rglob("*")) if file.is_file()})
    return Packed(str(path), False, {"": path.read_bytes()})


def present(packed: Packed) -> bool:
    """Whether the entry (or file) is already at its path on this node, each file of the size shipped."""
    root = Path(packed.path)
    return all((root / name if name else root).is_file() and (root / name if name else root).stat().st_size == len(data)
               for name, data in packed.files.items())


def keep(packed: Packed) -> None:
    """Write a packed entry (or file) at its path on this node, unless it is there: a folder built beside it and
    renamed into place whole, as `carclf.cache` builds one; a file through `atomic_path`."""
    if present(packed):
        return
    root = Path(packed.path)
    if not packed.folder:
        with atomic_path(root) as partial:
            partial.write_bytes(packed.files[""])
        return
    partial = partial_path(root)
    shutil.rmtree(partial, ignore_errors=True)
    for name, data in packed.files.items():
        (partial / name).parent.mkdir(parents=True, exist_ok=True)
        (partial / name).write_bytes(data)
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(partial, root)
    except OSError:  # another process of this node put the same entry in place first
        shutil.rmtree(partial, ignore_errors=True)
        if not present(packed):
            raise


@dataclass(frozen=True)
class Shipment:
    """Cache entries and files of the driver's, each as an object reference to its `Packed` form, for the nodes that
    do not see the driver's cache; `home` is the driver's node, None where every node sees its cache (nothing shipped)."""

    home: str | None = None
    entries: tuple[ray.ObjectRef, ...] = ()

    @classmethod
    def to_nodes(cls, needed: bool) -> Shipment:
        """An empty shipment from this driver's node, or none at all where no node `needed` the driver's cache."""
        return cls(ray.get_runtime_context().get_node_id() if needed else None)

    def adding(self, paths: list[Path | None]) -> Shipment:
        """The shipment with the entries (folders) and files at `paths` put into Ray's object store (None and missing
        paths left out); itself where nothing is shipped."""
        if self.home is None:
            return self
        return Shipment(self.home, self.entries + tuple(ray.put(pack(Path(path))) for path in paths
                                                        if path is not None and Path(path).exists()))

    def unpack(self) -> None:
        """Put every shipped entry at its path on this node (where it is missing)."""
        for reference in self.entries:
            keep(ray.get(reference))


def weights_entry(weights: str) -> Path | None:
    """What to ship of `model.weights`: its cache entry's folder (the synthetic backbone's), the file itself (ImageNet's
    or the user's), or None (random weights)."""
    path = Path(weights)
    if not path.is_file():
        return None
    return path.parent if (path.parent / "manifest.json").is_file() else path


def on_node(function: Callable[..., Any], shipment: Shipment, product: Path | None, *args: Any) -> tuple[Any, Packed | None]:
    """Run as a Ray task: `function(*args)` after the shipment is unpacked here; with its result, the cache entry it
    built (`product`) packed for the driver when the driver does not see this node's cache, else None."""
    shipment.unpack()
    result = function(*args)
    elsewhere = shipment.home not in (None, ray.get_runtime_context().get_node_id())
    return result, pack(product) if elsewhere and product is not None and Path(product).exists() else None


def returned(result: tuple[Any, Packed | None]) -> Any:
    """The result of an `on_node` task, its product written into the driver's cache first."""
    value, product = result
    if product is not None:
        keep(product)
    return value
