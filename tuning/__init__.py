"""tuning: experiment files, the Ray Tune search, retraining the best configuration, the report."""

import carclf  # noqa: F401  (checks the Keras backend before anything loads Keras)
