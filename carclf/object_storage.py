"""Folders on object storage (`s3://bucket/prefix`, or any URI pyarrow's filesystems take, as Ray Tune's
`storage_path` does), copied to and from a local mirror in carclf's cache.

carclf reads and writes its own files on a local disk; a run or a model kept on object storage is
worked on in a mirror (`mirror_path`, named by a digest of its URI) and copied with `download` and
`upload`. pyarrow's filesystems take each store's standard configuration from the environment (for
S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`, or the
machine's role), as Ray's storage does on every node: carclf passes and prints no credentials.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Callable, Iterable

import pyarrow
import pyarrow.fs as pafs

from carclf.files import atomic_path, cache_home


class ObjectStorageError(RuntimeError):
    """A URI that no filesystem takes, or a store that cannot be reached or read."""


def is_uri(text: str | Path) -> bool:
    """Whether a setting names object storage (`scheme://...`) rather than a local path."""
    return "://" in str(text)


def join(uri: str, name: str) -> str:
    return f"{uri.rstrip('/')}/{name}"


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """pyarrow's filesystem for `uri` and the path in it, or an `ObjectStorageError` naming the URI."""
    try:
        return pafs.FileSystem.from_uri(uri.rstrip("/"))
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise ObjectStorageError(f"{uri}: {str(error).splitlines()[0]}") from None


def mirror_path(uri: str) -> Path:
    """The local folder that mirrors the folder at `uri`: in carclf's cache, named by a digest of the URI and its last part."""
    uri = uri.rstrip("/")
    return cache_home() / "mirrors" / hashlib.sha256(uri.encode()).hexdigest()[:16] / uri.rsplit("/", 1)[-1]


def listing(uri: str) -> dict[str, int]:
    """The files under the folder at `uri`: path relative to it → size; empty where there is none."""
    fs, root = filesystem(uri)
    try:
        infos = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except (pyarrow.ArrowException, OSError) as error:
        raise ObjectStorageError(f"{uri}: cannot be listed ({str(error).splitlines()[0]})") from None
    return {info.path[len(root) + 1:]: info.size for info in infos if info.type == pafs.FileType.File}


def download(uri: str, local: Path, wanted: Callable[[str], bool] = lambda name: True) -> list[str]:
    """Copy the files under `uri` that are `wanted` (by their relative path) into `local`, each written atomically over
    what is there; returns their relative paths."""
    fs, root = filesystem(uri)
    names = [name for name in listing(uri) if wanted(name)]
    for name in names:
        try:
            with fs.open_input_stream(f"{root}/{name}") as source, atomic_path(local / name) as partial:
                with open(partial, "wb") as target:
                    shutil.copyfileobj(source, target, 2**22)
        except (pyarrow.ArrowException, OSError) as error:
            raise ObjectStorageError(f"{join(uri, name)}: cannot be read ({str(error).splitlines()[0]})") from None
    return names


def fetch_folder(uri: str) -> Path:
    """A fresh local copy of the folder at `uri` (its mirror, replaced whole), or an `ObjectStorageError` when nothing is there."""
    local = mirror_path(uri)
    shutil.rmtree(local, ignore_errors=True)
    if not download(uri, local):
        raise ObjectStorageError(f"{uri}: no such folder, or an empty one")
    return local


def upload(local: Path, uri: str, names: Iterable[str]) -> None:
    """Copy each file or folder `names` (relative to `local`) that exists to the same place under `uri`; a folder's earlier
    copy there is replaced whole."""
    fs, root = filesystem(uri)
    for name in names:
        source = local / name
        if not source.exists():
            continue
        try:
            if source.is_dir():
                fs.delete_dir_contents(f"{root}/{name}", missing_dir_ok=True)
            pafs.copy_files(str(source), f"{root}/{name}", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        except (pyarrow.ArrowException, OSError) as error:
            raise ObjectStorageError(f"{join(uri, name)}: cannot be written ({str(error).splitlines()[0]})") from None


def read_text(uri: str) -> str | None:
    """The text of the file at `uri`, None where there is none."""
    fs, path = filesystem(uri)
    try:
        with fs.open_input_stream(path) as source:
            return source.read().decode()
    except FileNotFoundError:
        return None
    except (pyarrow.ArrowException, OSError) as error:
        raise ObjectStorageError(f"{uri}: cannot be read ({str(error).splitlines()[0]})") from None


def write_text(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    try:
        with fs.open_output_stream(path) as target:
            target.write(text.encode())
    except (pyarrow.ArrowException, OSError) as error:
        raise ObjectStorageError(f"{uri}: cannot be written ({str(error).splitlines()[0]})") from None


def delete_file(uri: str) -> None:
    fs, path = filesystem(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass
