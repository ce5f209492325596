"""Stage 2: multi-worker training with tf.distribute.MultiWorkerMirroredStrategy (issue 3, not built yet)."""
