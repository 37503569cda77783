"""One cache protocol for everything carclf keeps between runs: a folder per key, with its manifest written last.

The decoded image store, the cached head features, the synthetic backbone and the transfer probe
are each a `CacheEntry`: the folder `<cache>/<kind>/<key>/`, whose key hashes everything its
contents depend on (`entry_key`), so a changed input names another folder and nothing stale is
ever found under a key. An entry is built in a partial folder beside it (named by host and
process, `carclf.files.partial_path`); its files' sizes and SHA-256 digests, the builder's
details and a digest of the manifest itself go into `manifest.json`, written last; then the
folder is renamed into place. A reader therefore sees a whole entry or none: a build that died
leaves only its partial folder, which the next build in that kind's folder removes.

An entry is ready when its manifest is there, is whole (its own digest matches, so an edited or
cut-off manifest is refused), names this protocol, kind and key (an entry of an earlier layout,
or copied from another key, never passes), and every file it lists has its recorded size; with
`checksum`, its recorded digest too. Builders of the same key may race: each renames its own
complete folder into place, and whichever lands last wins, holding the same content.

`file_sha256` computes a file's digest once per process while the file stays as it was: keys hash
the weights file (ImageNet's is ~100 MB) and a search asks for that key several times at start-up.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from carclf.files import cache_root, finite, partial_path, read_json, remove_abandoned_partials, write_json

logger = logging.getLogger(__name__)
PROTOCOL = 1  # in every key and manifest: entries written before this protocol never match
MANIFEST = "manifest.json"
SETTLED_NS = 2 * 10**9  # a file unchanged this long is past its filesystem's timestamp resolution (FAT: 2 s)


class CacheError(RuntimeError):
    """A cache entry is incomplete, damaged, or not the entry it is taken for."""


def entry_key(kind: str, described: Any) -> str:
    """24 hex digits of SHA-256 over what an entry's contents depend on (JSON), its kind and the protocol."""
    text = json.dumps({"protocol": PROTOCOL, "kind": kind, "described": described}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class CacheEntry:
    """The entry `key` of `kind` ("decoded", "features", "backbones", "probes") under the cache `root`."""

    root: Path
    kind: str
    key: str

    @classmethod
    def of(cls, cache_dir: str, kind: str, described: Any) -> CacheEntry:
        """The entry for `described` under `data.cache_dir` (or the user's cache when it is empty)."""
        return cls(cache_root(cache_dir), kind, entry_key(kind, described))

    @classmethod
    def at(cls, folder: str | Path) -> CacheEntry:
        """The entry whose folder is `folder` (what trials receive)."""
        folder = Path(folder)
        return cls(folder.parent.parent, folder.parent.name, folder.name)

    @property
    def folder(self) -> Path:
        return self.root / self.kind / self.key

    def manifest(self, checksum: bool = False) -> dict:
        """The manifest of a complete entry, or `CacheError` naming the folder and what is wrong.

        Its `details` are what the builder recorded; `checksum` also hashes every file (once per
        process while a file is unchanged, `file_sha256`).
        """
        path = self.folder / MANIFEST
        if not path.is_file():
            raise CacheError(f"{self.folder}: no {MANIFEST}: the cache entry is incomplete")
        try:
            manifest = read_json(path)
        except (OSError, ValueError) as error:
            raise CacheError(f"{path}: unreadable manifest ({error})") from None
        named = (manifest.get("protocol"), manifest.get("kind"), manifest.get("key")) if isinstance(manifest, dict) else None
        if named != (PROTOCOL, self.kind, self.key):
            raise CacheError(f"{self.folder}: the manifest was written for another entry or by another version of carclf")
        if manifest.pop("manifest_sha256", None) != _digest_of(manifest):
            raise CacheError(f"{path}: the manifest does not match its own digest (changed or damaged)")
        for name, recorded in manifest["files"].items():
            file = self.folder / name
            size = file.stat().st_size if file.is_file() else None
            if size != recorded["bytes"]:
                raise CacheError(f"{file}: {'missing' if size is None else f'{size} bytes'}, the manifest says "
                                 f"{recorded['bytes']} (truncated or damaged)")
            if checksum and file_sha256(file) != recorded["sha256"]:
                raise CacheError(f"{file}: its bytes do not match the checksum in {MANIFEST} (changed or damaged)")
        return manifest

    def ready(self, checksum: bool = False) -> bool:
        try:
            self.manifest(checksum)
        except CacheError:
            return False
        return True

    def reuse(self, what: str) -> dict | None:
        """The verified (checksummed) manifest, or None when the entry must be built; a damaged one is named.

        What builds of this kind killed on this host left behind is removed here too.
        """
        remove_abandoned_partials(self.folder.parent)
        try:
            manifest = self.manifest(checksum=True)
        except CacheError as error:
            if self.folder.exists():
                logger.warning("rebuilding the %s: %s", what, error)
            return None
        logger.info("reusing the %s %s", what, self.folder)
        return manifest

    def build(self, writer: Callable[[Path], dict]) -> dict:
        """Build the entry anew: `writer(folder)` fills a partial folder and returns the details to record.

        The manifest is written last and the folder renamed into place, replacing what was there
        (nothing, a damaged entry, or another builder's of the same key); the new manifest is returned.
        A writer that raises leaves no entry and no partial folder.
        """
        remove_abandoned_partials(self.folder.parent)
        partial = partial_path(self.folder)
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            details = writer(partial)
            files = {file.name: {"bytes": file.stat().st_size, "sha256": file_sha256(file)}
                     for file in sorted(partial.iterdir()) if file.is_file()}
            manifest = {"protocol": PROTOCOL, "kind": self.kind, "key": self.key, "files": files, "details": details}
            write_json(partial / MANIFEST, {**manifest, "manifest_sha256": _digest_of(manifest)})
            self._publish(partial)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return manifest

    def _publish(self, partial: Path) -> None:
        """Rename the complete `partial` folder to the entry's, setting aside (then removing) what is there."""
        aside = partial_path(self.folder.with_name(f"{self.key}-replaced"))
        try:
            os.rename(self.folder, aside)
        except FileNotFoundError:
            pass
        try:
            os.rename(partial, self.folder)
        except OSError:
            if not self.ready():
                raise
            # another builder's complete entry of the same key landed in between: it holds the same
        finally:
            shutil.rmtree(aside, ignore_errors=True)


def _digest_of(manifest: dict) -> str:
    """The manifest's digest, over the JSON `write_json` writes (NaN as null), so a manifest read back matches."""
    return hashlib.sha256(json.dumps(finite(manifest), sort_keys=True, default=str).encode()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, computed once per process while the file stays as it was.

    A digest is remembered under the file's identity, size and change times, and only for a file
    unchanged for `SETTLED_NS`: a file written again within its filesystem's timestamp resolution
    could keep all of them, so a just-written file is hashed every time it is asked for.
    """
    status = os.stat(path)
    stamp = (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns, status.st_ctime_ns)
    if time.time_ns() - max(status.st_mtime_ns, status.st_ctime_ns) < SETTLED_NS:
        return _sha256(path)
    return _settled_sha256(os.path.abspath(path), stamp)


@functools.lru_cache(maxsize=256)
def _settled_sha256(path: str, stamp: tuple[int, ...]) -> str:
    """`_sha256` remembered by (path, stamp): a changed file has another stamp, so it is hashed again."""
    return _sha256(path)


def _sha256(path: str | Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
