"""The text path's string kernels, one by one: onnxruntime (+ onnxruntime-extensions) next to TensorFlow.

    .venv/bin/python benchmarks/text_ops.py --rows 100000 --repeats 5

normalize_text is four string passes (lower-case, drop apostrophes, punctuation and whitespace to
spaces, split on spaces); in the exported graph each is one node. This times each pass alone in
both engines, one thread, on the same `--rows` synthetic comments (tfbridge.datasets.synthetic_table)
in batches of `--batch`, each engine in its own process (the extensions library must not share a
process with TensorFlow's RE2, see README). Prints the median time per 100,000 strings and
TF / onnxruntime: below 1.00x the portable kernel is the slower one. The first row is what handing
the batch in and out costs with no work (Python strings to onnxruntime's std::string and back; TF's
batches are tensors already); each pass's time includes it once.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfbridge.contracts import PUNCTUATION_AND_WHITESPACE  # noqa: E402

# (name, ONNX node (op, domain, attributes, extra constant inputs), the TF function of normalize_text)
PASSES = {
    "strings in and out (Identity)": ("Identity", "", {}, []),
    "lower-case": ("StringNormalizer", "", {"case_change_action": "LOWER", "locale": "C"}, []),
    "drop apostrophes": ("StringRegexReplace", "ai.onnx.contrib", {}, ["'", ""]),
    "punctuation to spaces": ("StringRegexReplace", "ai.onnx.contrib", {}, [PUNCTUATION_AND_WHITESPACE, " "]),
    "split on spaces": ("StringSplit", "", {"delimiter": " "}, []),
}


def comments(rows: int) -> list[str]:
    from tfbridge.datasets import synthetic_table

    return [s or "" for s in synthetic_table(rows, seed=1).column("comment").to_pylist()]


def timed(run, batches, repeats: int) -> float:
    run(batches[0])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for batch in batches:
            run(batch)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def onnxruntime_times(rows: int, batch: int, repeats: int) -> dict[str, float]:
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from tfbridge.scoring.session import session_options

    text = np.array(comments(rows), dtype=object)
    batches = [text[i:i + batch] for i in range(0, rows, batch)]
    result = {}
    for name, (op, domain, attributes, constants) in PASSES.items():
        initializers = [helper.make_tensor(f"c{i}", TensorProto.STRING, [1], [c.encode()])
                        for i, c in enumerate(constants)]
        outputs = ["y", "n"] if op == "StringSplit" else ["y"]
        node = helper.make_node(op, ["x", *(t.name for t in initializers)], outputs, domain=domain, **attributes)
        graph = helper.make_graph(
            [node], "pass", [helper.make_tensor_value_info("x", TensorProto.STRING, [None])],
            [helper.make_tensor_value_info("y", TensorProto.STRING, None)], initializer=initializers)
        opsets = [helper.make_opsetid("", 20), helper.make_opsetid("ai.onnx.contrib", 1)]
        model = helper.make_model(graph, opset_imports=opsets)
        session = ort.InferenceSession(model.SerializeToString(), session_options(1, text_ops=bool(domain)),
                                       providers=["CPUExecutionProvider"])
        result[name] = timed(lambda b: session.run(["y"], {"x": b}), batches, repeats)
    return result


def tensorflow_times(rows: int, batch: int, repeats: int) -> dict[str, float]:
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    functions = {
        "strings in and out (Identity)": tf.identity,
        "lower-case": tf.strings.lower,
        "drop apostrophes": lambda x: tf.strings.regex_replace(x, "'", ""),
        "punctuation to spaces": lambda x: tf.strings.regex_replace(x, PUNCTUATION_AND_WHITESPACE, " "),
        "split on spaces": lambda x: tf.strings.split(x, " "),
    }
    text = comments(rows)
    batches = [tf.constant(text[i:i + batch]) for i in range(0, rows, batch)]
    return {name: timed(tf.function(fn), batches, repeats) for name, fn in functions.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engine", choices=["onnxruntime", "tensorflow"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.engine:
        engine = onnxruntime_times if args.engine == "onnxruntime" else tensorflow_times
        print(json.dumps(engine(args.rows, args.batch, args.repeats)))
        return
    times = {}
    for engine in ("onnxruntime", "tensorflow"):
        out = subprocess.run([sys.executable, __file__, "--engine", engine, "--rows", str(args.rows),
                              "--batch", str(args.batch), "--repeats", str(args.repeats)],
                             capture_output=True, text=True, check=True).stdout
        times[engine] = json.loads(out.strip().splitlines()[-1])
    per = 100_000 / args.rows * 1e3
    print(f"{args.rows:,} strings in batches of {args.batch:,}, 1 thread, median of {args.repeats} runs, "
          "ms per 100,000 strings\n")
    print("| pass | onnxruntime | TensorFlow | TF / onnxruntime |\n|---|---:|---:|---:|")
    for name in PASSES:
        ort_ms, tf_ms = times["onnxruntime"][name] * per, times["tensorflow"][name] * per
        print(f"| {name} | {ort_ms:.1f} | {tf_ms:.1f} | {tf_ms / ort_ms:.2f}x |")
    ort_total = sum(list(times["onnxruntime"].values())[1:]) * per
    tf_total = sum(list(times["tensorflow"].values())[1:]) * per
    print(f"| the four passes | {ort_total:.1f} | {tf_total:.1f} | {tf_total / ort_total:.2f}x |")


if __name__ == "__main__":
    main()
