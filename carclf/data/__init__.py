"""Car datasets on disk → one checked pandas table → a decoded uint8 store → numpy batches."""
