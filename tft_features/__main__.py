"""`python -m tft_features --config C [Beam pipeline options...]`: the feature stage as its own Beam job."""

import sys

from tfbridge.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
