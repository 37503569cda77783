"""Car datasets on disk → one pandas table → `tf.data` batches."""
