"""Stage 4: online scoring, the exported ONNX graph behind an HTTP API (`tfbridge serve --model DIR`).

    tfbridge serve --model runs/demo/model [--port 8080] [--workers N]
    curl -s localhost:8080/v1/models/demo:predict -d '{"instances": [{"carat": 0.3, "cut": "Ideal", ...}]}'

The model is read, checked and fed by `tfbridge.scoring`, as the Spark scorer reads, checks and feeds it, and
its outputs carry the Spark scorer's column names (`prediction`, `prediction_probabilities`): a row gets the
same answer from both. No Spark, no TensorFlow: onnxruntime, Starlette and uvicorn.

- `model`: the loaded model, one onnxruntime session per process, warmed up before it takes traffic.
- `protocol`: the request forms (Open Inference Protocol v2 and `instances`) in and out, every value checked.
- `batching`: concurrent requests coalesced into one onnxruntime run, each given back its own rows.
- `reload`: a new model version taken without a restart, verified and warmed up first; a bad one refused.
- `app`: the routes; `metrics`: Prometheus; `openapi`: the OpenAPI document; `server`: uvicorn and the options.
"""
