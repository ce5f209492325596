"""The export stage: the raw-features SavedModel (TFT transform + model) as one ONNX graph.

`convert` runs tf2onnx on the SavedModel's serving signature and records the graph in the model
manifest; `lowerings` is the registry of our handlers for the TF ops tf2onnx lacks or lowers badly,
one per op, each with its own parity test (tests/onnx_export/test_lowerings.py).
"""
