"""`python -m onnx_export --config C`: the export stage as its own job (the ONNX graph, named in model/manifest.json), e.g. a
cluster's last step."""

import sys

from tfbridge.jobs import run_config_job

if __name__ == "__main__":
    sys.exit(run_config_job("python -m onnx_export", __doc__, "onnx_export.convert:export_job"))
