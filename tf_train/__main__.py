"""`python -m tf_train --config C`: one training worker, the cluster from TF_CONFIG (see tf_train.worker), or
the gradient-boosted trees of `train.model: gbdt` (tf_train.gbdt)."""

import sys

from tfbridge.jobs import run_config_job

if __name__ == "__main__":
    # No lock on the output: the workers of one cluster all write it (under `tfbridge train` its launcher holds it).
    sys.exit(run_config_job("python -m tf_train", __doc__, "tf_train.run:run_training", lock_output=False))
