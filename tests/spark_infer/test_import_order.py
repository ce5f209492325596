"""Import order never changes a prediction: each order in its own fresh process.

TensorFlow loads its RE2 into the global symbol scope; onnxruntime-extensions, loaded after it the
plain way, bound its RE2 calls to that copy and its regex replacement silently did nothing. The
scorer loads a private copy of the library with RTLD_DEEPBIND (tfbridge.scoring.session) and checks it
on known strings before a session runs.
"""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.helpers import committed
from tests.onnx_export.test_parity import fresh_rows
from tfbridge.scoring.session import HASH_PROBE, PROBE_TEXT, expected_text

TEXTS = [*PROBE_TEXT, "Great price!!! Don't\tbuy\n it...", "ÆØÅ—naïve, café's", "a'b'c", "  \t ", "x_y-z/w"]

# Each script prints one JSON line: the probe graph's outputs on TEXTS and the model's predictions.
SCRIPT = """
import json, sys
{first}
import numpy as np, pyarrow.parquet as pq
from spark_infer import load_model
from tfbridge.scoring.session import HASH_PROBE, _probe_graph, make_session
texts = json.loads(sys.argv[2])
probe = make_session(_probe_graph(), text_ops=True).run(
    ["out", "hashed"], {{"text": np.array(texts, object), "keys": np.array(list(HASH_PROBE), object)}})
model = load_model(sys.argv[1])
prediction = model.predict(pq.read_table(sys.argv[3]))["prediction"].tolist()
print("RESULT " + json.dumps({{"probe": probe[0].tolist(), "hashed": probe[1].tolist(), "prediction": prediction}}))
"""
# The installed library, found without importing onnxruntime_extensions (0.14.0's package imports transformers).
INSTALLED = ("import ctypes, importlib.util, pathlib\n"
             "installed = str(next(pathlib.Path(importlib.util.find_spec('onnxruntime_extensions')"
             ".submodule_search_locations[0]).glob('_extensions_pydll*.so')))\n")
ORDERS = {
    # loaded as Python loads an extension module, after TensorFlow's RE2 is in the global scope
    "tensorflow first": INSTALLED + "import tensorflow, tensorflow_transform\nctypes.CDLL(installed)",
    "onnxruntime first": (INSTALLED + "import onnxruntime\n"
                          "onnxruntime.SessionOptions().register_custom_ops_library(installed)\nimport tensorflow"),
    "no tensorflow": "import onnxruntime",
}


def run_script(python_env, first: str, *args) -> dict:
    env, python = python_env
    done = subprocess.run([python, "-c", SCRIPT.format(first=first), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def text_rows(exported, tmp_path_factory):
    stats = json.loads(committed(exported.layout).stats_path.read_text())["features"]
    path = tmp_path_factory.mktemp("import-order") / "rows.parquet"
    pq.write_table(fresh_rows(seed=47, stats=stats).slice(0, 500), path)
    return path


def test_every_import_order_gives_the_same_tokens_and_predictions(python_env, exported, text_rows):
    results = {order: run_script(python_env, first, exported.layout.model_dir, json.dumps(TEXTS), text_rows)
               for order, first in ORDERS.items()}
    want = [expected_text(t) for t in TEXTS]
    for order, result in results.items():
        assert result["probe"] == want, order
        assert result["hashed"] == list(HASH_PROBE.values()), order
    reference = results["no tensorflow"]["prediction"]
    for order, result in results.items():
        np.testing.assert_array_equal(result["prediction"], reference, err_msg=order)


def test_the_self_check_refuses_a_library_bound_to_tensorflows_re2(python_env):
    """The library loaded the plain way after TensorFlow: the check sees the wrong tokens and says why."""
    env, python = python_env
    script = (INSTALLED + "import tensorflow\n"
              "from tfbridge.scoring import session\n"
              "session.text_ops_library = lambda: installed\n"
              "try:\n    session.check_text_ops()\nexcept session.TextOpsError as e:\n    print('REFUSED', e)\n")
    done = subprocess.run([python, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "REFUSED onnxruntime-extensions' StringRegexReplace gives wrong results in this process" in done.stdout
