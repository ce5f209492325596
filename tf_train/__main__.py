"""`python -m tf_train --config C`: one training worker, the cluster from TF_CONFIG (see tf_train.worker).

`python -m tf_train export --config C`: the export stage (model/model.onnx), e.g. as a cluster's last step.
"""

import sys

from tfbridge.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    sys.exit(main(args if args[:1] == ["export"] else ["train-worker", *args]))
