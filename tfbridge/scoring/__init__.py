"""The scoring core: the exported model loaded, checked against its manifest and fed raw rows, and its
onnxruntime sessions. Every host of the model uses it (the Spark job, the export's parity gate, the
report), so all give the same answer by construction. It imports neither Spark nor TensorFlow.
"""

from tfbridge.scoring.model import MissingValues, ScoringModel, arrow_feeds, feeds, graph_inputs

__all__ = ["MissingValues", "ScoringModel", "arrow_feeds", "feeds", "graph_inputs"]
