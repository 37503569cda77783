"""Progress of long work that runs away from the console (a Ray task), told through a small file.

Ray's workers do not print to the driver's console (carclf starts Ray with `log_to_driver=False`,
so trials do not flood it), so a long task such as pretraining the synthetic backbone or
computing the feature cache writes how far it is to a JSON file, and the driver, while it waits,
prints each change with an estimate of the time left (`tuning.progress`).
"""

from __future__ import annotations

import time
from pathlib import Path

import keras

from carclf.files import write_json


class ProgressFile:
    """`{"what", "done", "total", "elapsed_s"}` rewritten atomically at each `update`; a None path does nothing."""

    def __init__(self, path: str | Path | None, what: str, total: int):
        self.path, self.what, self.total = (Path(path) if path else None), what, total
        self.started = time.monotonic()

    def update(self, done: int) -> None:
        if self.path is not None:
            write_json(self.path, {"what": self.what, "done": done, "total": self.total,
                                   "elapsed_s": time.monotonic() - self.started})


class EpochProgress(keras.callbacks.Callback):
    """A `ProgressFile` updated at the end of every epoch of `fit`."""

    def __init__(self, progress: ProgressFile):
        super().__init__()
        self.progress = progress

    def on_epoch_end(self, epoch, logs=None):
        self.progress.update(epoch + 1)
