"""Stage 3: bulk scoring of raw data on Spark with one ONNX graph (issues 4 and 5, not built yet)."""
