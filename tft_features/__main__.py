"""`python -m tft_features --config C [Beam pipeline options...]`: the feature stage as its own Beam job."""

import sys

from tfbridge.jobs import run_config_job

if __name__ == "__main__":
    sys.exit(run_config_job("python -m tft_features", __doc__, "tft_features.pipeline:features_job", beam_args=True))
