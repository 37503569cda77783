"""tuning: experiment files, the Ray Tune search, retraining the best configuration, the report."""
