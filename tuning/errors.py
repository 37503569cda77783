"""The errors a search reports as one line, `error: ...` with exit status 2, instead of a traceback.

Each names the file, key or flag at fault and what to do; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from carclf.config import ConfigError
from carclf.data.store import StoreError
from carclf.data.table import DatasetError
from carclf.features import FeatureCacheError
from carclf.model import WeightsError
from carclf.object_storage import ObjectStorageError
from tuning.run_folder import RunFolderError, RunInUseError
from tuning.study_storage import StudyError


class SearchError(RuntimeError):
    """The search cannot start or did not finish."""


EXPECTED_ERRORS = (SearchError, ConfigError, DatasetError, StoreError, FeatureCacheError, WeightsError, StudyError,
                   RunInUseError, RunFolderError, ObjectStorageError)
