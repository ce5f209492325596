"""onnxruntime sessions for the exported graph, in any process, whatever it imported first.

The text graph's regex replacement is onnxruntime-extensions' `StringRegexReplace`
(standard ONNX has no regex replace). That library carries its own copy of RE2
and exports its symbols. TensorFlow loads its own RE2 into the process's global
symbol scope (RTLD_GLOBAL), so in a process that imported TensorFlow first, the
extensions library bound its RE2 calls to TensorFlow's copy, built with another
abseil: the replacement silently did nothing (measured: `"price! don't. a,b"`
stayed as it was, and predictions changed). Loading the library with
RTLD_DEEPBIND makes it use its own RE2. A process may already hold the library
bound the wrong way (`import onnxruntime_extensions` after TensorFlow loads
it as a Python module), and dlopen hands back a loaded library as it is, so
the scorer loads a private copy of the file (content-addressed, in a directory
of the temp directory that only this user may write, its bytes checked against
the installed library before each load), which is always a fresh load.

Every session that registers the library first proves it on known strings
(`check_text_ops`): wrong tokens stop scoring with an error that says why.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import os
import re
import tempfile
from pathlib import Path

import numpy as np

from tfbridge.contracts import PUNCTUATION_AND_WHITESPACE, BrokenRuntimeError, staged

_LIBRARY: tuple[str, ctypes.CDLL] | None = None  # this process's private copy, kept loaded
_TEXT_OPS_CHECKED = False
# Punctuation, apostrophes, tabs, newlines and non-ASCII letters (which must pass through untouched).
PROBE_TEXT = ("price! don't. a,b", "tab\there\nnext", "naïve café—Größe", "(x)[y]{z}<w>~`|\\^", "")


class TextOpsError(BrokenRuntimeError):
    """onnxruntime-extensions gives wrong results in this process: scoring would be silently wrong."""


def text_ops_library() -> str:
    """The path of onnxruntime-extensions' library, loaded privately in this process (see module doc)."""
    global _LIBRARY
    if _LIBRARY is None:
        spec = importlib.util.find_spec("onnxruntime_extensions")
        if spec is None or not spec.submodule_search_locations:
            raise TextOpsError("the graph has text ops and needs the package onnxruntime-extensions, which is "
                               "not installed")
        package = Path(list(spec.submodule_search_locations)[0])
        source = next(p for p in package.iterdir() if p.name.startswith("_extensions_pydll") and p.suffix == ".so")
        data = source.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        directory = Path(tempfile.gettempdir()) / f"tfbridge-{os.getuid()}"
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise TextOpsError(f"{directory} is not a private directory of this user: refusing to load a library "
                               f"from it")
        copy = directory / f"ortextensions-{digest[:16]}.so"
        # Code is loaded from this file: it must hold exactly the installed library's bytes.
        if not copy.exists() or hashlib.sha256(copy.read_bytes()).hexdigest() != digest:
            with staged(copy) as staging:
                staging.write_bytes(data)
        mode = os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
        _LIBRARY = (str(copy), ctypes.CDLL(str(copy), mode=mode))
    return _LIBRARY[0]


def session_options(threads: int | None = None, text_ops: bool = False):
    """CPU options: `threads` intra-op threads (None: onnxruntime's default), no spinning; the text-op
    library registered and checked when the graph uses it."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    if text_ops:
        options.register_custom_ops_library(text_ops_library())
        check_text_ops()
    return options


def make_session(model, threads: int | None = None, text_ops: bool = False, use_gpu: bool = False):
    """An onnxruntime session for `model` (a path or serialized bytes)."""
    import onnxruntime as ort

    providers = ["CPUExecutionProvider"]
    if use_gpu and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    return ort.InferenceSession(model if isinstance(model, bytes) else str(model),
                                session_options(threads, text_ops), providers=providers)


def expected_text(text: str) -> str:
    """normalize_text's two replacement passes, in Python (the reference the probe is held to)."""
    return re.sub(PUNCTUATION_AND_WHITESPACE, " ", text.replace("'", ""))


def check_text_ops() -> None:
    """Runs normalize_text's replacement passes through the library once per process; TextOpsError if wrong."""
    global _TEXT_OPS_CHECKED
    if _TEXT_OPS_CHECKED:
        return
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(text_ops_library())
    session = ort.InferenceSession(_probe_graph(), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"text": np.array(PROBE_TEXT, object)})[0].tolist()
    want = [expected_text(t) for t in PROBE_TEXT]
    if got != want:
        raise TextOpsError(
            f"onnxruntime-extensions' StringRegexReplace gives wrong results in this process (for {PROBE_TEXT[0]!r} "
            f"it gave {got[0]!r}, expected {want[0]!r}): a library loaded before it, such as another copy of RE2, "
            f"changed its behaviour. Refusing to score text features with it: predictions would be wrong")
    _TEXT_OPS_CHECKED = True


def _probe_graph() -> bytes:
    from onnx import TensorProto, helper

    domain = "ai.onnx.contrib"

    def constant(name, value):
        return helper.make_tensor(name, TensorProto.STRING, [1], [value.encode()])

    nodes = [helper.make_node("StringRegexReplace", ["text", "apostrophe", "nothing"], ["joined"], domain=domain),
             helper.make_node("StringRegexReplace", ["joined", "punctuation", "space"], ["out"], domain=domain)]
    graph = helper.make_graph(
        nodes, "text_ops_probe", [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info("out", TensorProto.STRING, [None])],
        [constant("apostrophe", "'"), constant("nothing", ""), constant("punctuation", PUNCTUATION_AND_WHITESPACE),
         constant("space", " ")])
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 20),
                                                                  helper.make_opsetid(domain, 1)])
    return model.SerializeToString()
