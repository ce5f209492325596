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
of the temp directory, or of the user's cache directory where the temp directory is
mounted noexec, that only this user may write, its bytes checked against
the installed library before each load), which is always a fresh load.

Every session that registers the library first proves it on known strings
(`check_text_ops`): wrong tokens stop scoring with an error that says why. The
probe also lower-cases them as the graph does (StringNormalizer in the C.UTF-8
locale, which the C library provides): a host without that locale, or whose
C library maps letters otherwise, is refused the same way.
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

from tfbridge.contracts import BrokenRuntimeError, staged
from tfbridge.contracts.columns import DELETED_CHARACTERS, PUNCTUATION_AND_WHITESPACE, SIGMA_FOLD, TEXT_CASE_LOCALE

_LIBRARY: tuple[str, ctypes.CDLL] | None = None  # this process's private copy, kept loaded
_TEXT_OPS_CHECKED = False
# normalize_text's replacement passes after lower-casing, in order (tfbridge.contracts.columns).
_TEXT_PASSES = (SIGMA_FOLD, (DELETED_CHARACTERS, ""), (PUNCTUATION_AND_WHITESPACE, " "))
# Punctuation, apostrophes, tabs, newlines, Unicode upper case (final sigma, İ, ẞ, a titlecase digraph),
# Unicode quotes, dashes and spaces, and letters that must pass through untouched.
PROBE_TEXT = ("price! don't. a,b", "tab\there\nnext", "naïve café—Größe", "(x)[y]{z}<w>~`|\\^", "",
              "CAFÉ ÀÉÎÕÜ ΣΑΣ ΟΔΟΣ. ǅ İstanbul ẞ Ω Ж",
              "don’t ‘q’ “q” «q» a—b–c… d\u00a0e\u2009f\u3000g\u2028h ¿¡ 。、 ₹5 x≠y")


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
        refusals = []
        for directory in _private_directories():
            try:
                _LIBRARY = _load_private_copy(data, directory)
                break
            except OSError as e:  # e.g. "failed to map segment from shared object": a noexec mount
                refusals.append(f"{directory}: {e}")
        else:
            raise TextOpsError("cannot load a private copy of onnxruntime-extensions' library from any of "
                               + "; ".join(refusals))
    return _LIBRARY[0]


def _private_directories() -> list[Path]:
    """Where the private copy may live, in order: the temp directory, then the user's cache directory (the temp
    directory is mounted `noexec` on many hardened hosts, where no library loads from it)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return [Path(tempfile.gettempdir()) / f"tfbridge-{os.getuid()}", cache / "tfbridge"]


def _load_private_copy(data: bytes, directory: Path) -> tuple[str, ctypes.CDLL]:
    """The library's bytes as a content-addressed file in `directory` (this user's alone), freshly loaded."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise TextOpsError(f"{directory} is not a private directory of this user: refusing to load a library "
                           f"from it")
    digest = hashlib.sha256(data).hexdigest()
    copy = directory / f"ortextensions-{digest[:16]}.so"
    # Code is loaded from this file: it must hold exactly the installed library's bytes.
    if not copy.exists() or hashlib.sha256(copy.read_bytes()).hexdigest() != digest:
        with staged(copy) as staging:
            staging.write_bytes(data)
    mode = os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
    return str(copy), ctypes.CDLL(str(copy), mode=mode)


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
    """normalize_text before its split, in Python (the reference the probe is held to): Python lower-cases
    as TF does (Unicode's full mapping, final sigma included), then the replacement passes."""
    return _replaced(text.lower())


def _replaced(text: str) -> str:
    for pattern, rewrite in _TEXT_PASSES:
        text = re.sub(pattern, rewrite, text)
    return text


def check_text_ops() -> None:
    """Runs normalize_text's lower-casing and replacement passes through onnxruntime and the library once per
    process; TextOpsError if either is wrong."""
    global _TEXT_OPS_CHECKED
    if _TEXT_OPS_CHECKED:
        return
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.register_custom_ops_library(text_ops_library())
    try:
        session = ort.InferenceSession(_probe_graph(), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail type, naming the locale
        if TEXT_CASE_LOCALE not in str(e):
            raise
        raise TextOpsError(f"this host lacks the {TEXT_CASE_LOCALE} locale, with which onnxruntime lower-cases "
                           f"text as TensorFlow does: install it (Debian and Ubuntu ship it in libc-bin; RHEL and "
                           f"Fedora in glibc-minimal-langpack) or score with the SavedModel") from e
    got, lowered = (out.tolist() for out in session.run(["out", "lowered"], {"text": np.array(PROBE_TEXT, object)}))
    replaced = [_replaced(t) for t in lowered]
    want = [expected_text(t) for t in PROBE_TEXT]
    # The replacement passes first (on what onnxruntime lowered), then the whole: each failure says which part.
    for expected, why in (
            (replaced, lambda i: f"onnxruntime-extensions' StringRegexReplace gives wrong results in this process "
                                 f"(for {lowered[i]!r} it gave {got[i]!r}, expected {replaced[i]!r}): a library "
                                 f"loaded before it, such as another copy of RE2, changed its behaviour"),
            (want, lambda i: f"onnxruntime's StringNormalizer lower-cases text otherwise than TensorFlow on this host "
                             f"(locale {TEXT_CASE_LOCALE}; for {PROBE_TEXT[i]!r} it gave {lowered[i]!r}, which "
                             f"normalises to {got[i]!r}, expected {want[i]!r}): the host's C library maps letters "
                             f"another way")):
        wrong = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), None)
        if wrong is not None:
            raise TextOpsError(f"{why(wrong)}. Refusing to score text features with it: predictions would be wrong; "
                               f"score with the SavedModel")
    _TEXT_OPS_CHECKED = True


def _probe_graph() -> bytes:
    from onnx import TensorProto, helper

    domain = "ai.onnx.contrib"

    def constant(name, value):
        return helper.make_tensor(name, TensorProto.STRING, [1], [value.encode()])

    nodes = [helper.make_node("StringNormalizer", ["text"], ["lowered"], case_change_action="LOWER",
                              locale=TEXT_CASE_LOCALE)]
    constants = []
    for i, (pattern, rewrite) in enumerate(_TEXT_PASSES):
        constants += [constant(f"pattern{i}", pattern), constant(f"rewrite{i}", rewrite)]
        output = "out" if i == len(_TEXT_PASSES) - 1 else f"pass{i}"
        nodes.append(helper.make_node("StringRegexReplace", [nodes[-1].output[0], f"pattern{i}", f"rewrite{i}"],
                                      [output], domain=domain))
    graph = helper.make_graph(
        nodes, "text_ops_probe", [helper.make_tensor_value_info("text", TensorProto.STRING, [None])],
        [helper.make_tensor_value_info(name, TensorProto.STRING, [None]) for name in ("out", "lowered")],
        constants)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 20),
                                                                  helper.make_opsetid(domain, 1)])
    return model.SerializeToString()
