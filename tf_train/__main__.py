"""`python -m tf_train --config C`: one training worker, the cluster from TF_CONFIG (see tf_train.worker)."""

import sys

from tfbridge.cli import main

if __name__ == "__main__":
    sys.exit(main(["train-worker", *sys.argv[1:]]))
