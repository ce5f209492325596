"""Stage 2: tf_keras training under tf.distribute.MultiWorkerMirroredStrategy, exported on raw features.

`tf_train.launcher` starts N workers on loopback (the embedded default);
`tf_train.worker` is one worker, which is what each host of a real cluster
runs (`python -m tf_train --config C` with TF_CONFIG set).
"""
