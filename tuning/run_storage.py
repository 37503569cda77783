"""Where a run lives: a local folder, or a folder on object storage (`run.storage_path = s3://bucket/prefix`).

Ray Tune keeps its own files of a run (the experiment's state, the searcher's saved state, each
trial's results and checkpoints) wherever `storage_path` says, a URI included, and restores them
from there on every node. carclf's own files (`tuning.run_folder`: the dataset, the study, the
trials, the delivered model, the report) are written on the driver's disk. For a run on object
storage that disk holds a mirror (`carclf.object_storage.mirror_path`): each command starts by
replacing the mirror with what the URI holds (`pull`, checkpoints left out), and every stage it
reaches is copied back (`push`), so the URI holds the whole run and `--resume` works from any machine.

The run's lock (`RunFolder.hold`) is an operating-system lock on the mirror, which only this machine
sees; on object storage the owner is also written to `URI/.lock` and a second owner elsewhere is
refused, naming the first. Object stores have no atomic create-if-absent that pyarrow exposes, so
two commands started on two machines within the same moment could both pass; a `.lock` left by a
killed command on this machine is taken over (this machine's lock says it is not held), one left by
another machine is named with how to remove it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from carclf.object_storage import delete_file, download, is_uri, join, listing, mirror_path, read_text, upload, write_text
from tuning.run_folder import RAY_FOLDER, RunFolder, RunInUseError

CHECKPOINT_PREFIX = "checkpoint_"  # Ray's checkpoint folders, in each trial's folder


def run_location(storage_path: str, name: str) -> str:
    """Where the run `name` under `storage_path` lives, as one comparable string: a URI, or a normalised absolute path."""
    return join(storage_path, name) if is_uri(storage_path) else os.path.normpath(Path(storage_path) / name)


def not_a_checkpoint(name: str) -> bool:
    return not any(part.startswith(CHECKPOINT_PREFIX) for part in name.split("/")[:-1])


@dataclass(frozen=True)
class RunPlace:
    """A run's folder on this machine (`local`), and the URI it mirrors (None for a run kept in a local folder)."""

    local: Path
    uri: str | None = None

    @classmethod
    def at(cls, location: str | Path) -> RunPlace:
        """The place of the run at `location`: a URI (mirrored), or a local folder."""
        return cls(mirror_path(str(location)), str(location).rstrip("/")) if is_uri(location) else cls(Path(location))

    @property
    def folder(self) -> RunFolder:
        return RunFolder(self.local)

    @property
    def where(self) -> str:
        """The run's own place, as users name it (`--resume` takes it)."""
        return self.uri or str(self.local)

    @property
    def storage_path(self) -> str:
        """The folder or URI the run is in, and the run's name (`run.storage_path`, `run.name`)."""
        return self.where.rsplit("/", 1)[0]

    @property
    def name(self) -> str:
        return self.where.rsplit("/", 1)[1]

    @property
    def ray_where(self) -> str:
        """Ray Tune's experiment in the run (`RunFolder.ray_dir`), as Ray restores it: a folder, or a URI."""
        return join(self.uri, RAY_FOLDER) if self.uri else str(self.folder.ray_dir)

    def check(self) -> None:
        """On object storage, that the URI's store is known and answers (an `ObjectStorageError` naming it if not), so a
        dry run finds a wrong scheme, bucket, endpoint or credentials before any work."""
        if self.uri is not None:
            listing(self.uri)

    def pull(self, fresh: bool = False) -> None:
        """Bring what the URI holds into the mirror, checkpoints left out; `fresh` empties the mirror first (its lock aside),
        so nothing of an earlier command is read. Nothing to do for a local run."""
        if self.uri is None:
            return
        if fresh:
            for item in self.local.iterdir() if self.local.is_dir() else ():
                if item.is_dir() and not item.is_symlink():
                    shutil.rmtree(item)
                elif item.name != ".lock":
                    item.unlink()
        download(self.uri, self.local, not_a_checkpoint)

    def pull_checkpoint(self, trial_folder: str) -> Path | None:
        """The newest checkpoint folder of the trial whose folder (in Ray's) is `trial_folder`, in the mirror (fetched from
        the URI); None without one."""
        local = self.folder.ray_dir / trial_folder
        if self.uri is None:
            checkpoints = sorted(local.glob(f"{CHECKPOINT_PREFIX}*"))
            return checkpoints[-1] if checkpoints else None
        trial = join(self.ray_where, trial_folder)
        names = sorted({name.split("/")[0] for name in listing(trial) if name.startswith(CHECKPOINT_PREFIX)})
        if not names:
            return None
        download(join(trial, names[-1]), local / names[-1])
        return local / names[-1]

    def push(self) -> None:
        """Copy carclf's own files of the run from the mirror to the URI; nothing to do for a local run."""
        if self.uri is not None:
            upload(self.local, self.uri, [path.name for path in self.folder.own_files()])

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        """Own the run while the block runs (`RunFolder.hold`, and on object storage `URI/.lock`), or raise `RunInUseError`."""
        with self.folder.hold():
            if self.uri is None:
                yield
                return
            lock = join(self.uri, ".lock")
            owner = read_text(lock)
            if owner is not None:
                held = json.loads(owner) if owner.startswith("{") else {"owner": owner.strip()}
                if held.get("host") != socket.gethostname():  # one of this machine's would hold the mirror's lock too
                    raise RunInUseError(f"{self.uri}: in use by {held.get('owner', 'another machine')}; wait for it to finish, "
                                        f"or use another --name (if that command no longer runs, delete {lock})")
            since = time.strftime("%Y-%m-%d %H:%M:%S")
            write_text(lock, json.dumps({"host": socket.gethostname(), "owner": f"pid {os.getpid()} on {socket.gethostname()} "
                                                                            f"since {since} ({' '.join(sys.argv)})"}))
            try:
                yield
            finally:
                delete_file(lock)

