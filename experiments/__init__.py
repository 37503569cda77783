"""The experiment files that ship with carclf (installed as `tuning.experiments`, so the demo runs
from a non-editable install too)."""
