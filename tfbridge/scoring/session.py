"""onnxruntime sessions for the exported graph, in any process, whatever it imported first.

The text graph's regex replacement is onnxruntime-extensions' `StringRegexReplace`
(standard ONNX has no regex replace). That library carries its own copy of RE2
and exports its symbols. TensorFlow loads its own RE2 into the process's global
symbol scope (RTLD_GLOBAL), so in a process that imported TensorFlow first, the
extensions library bound its RE2 calls to TensorFlow's copy, built with another
abseil: the replacement silently did nothing (measured: `"price! don't. a,b"`
stayed as it was, and predictions changed). Loading the library with
RTLD_DEEPBIND makes it use its own RE2. A process may already hold the library
bound the wrong way (loaded plainly after TensorFlow, as a Python module or by
a user's own session), and dlopen hands back a loaded library as it is, so
the scorer loads a private copy of the file, with the libraries its wheel bundles
beside it (`onnxruntime_extensions.libs`, found through the library's $ORIGIN rpath),
content-addressed, in a directory of the temp directory, or of the user's cache directory
where the temp directory is mounted noexec, that only this user may write, every file's
bytes checked against the installed ones before each load: always a fresh load.

Every session that registers the library first proves it on known strings
(`check_text_ops`), its hash too (FarmHash's Fingerprint64, TF's; the pinned 0.14.0
computes it, 0.15 std::hash): wrong tokens or hashes stop scoring with an error that says why. The
probe also lower-cases them as the graph does (StringNormalizer in the C.UTF-8
locale, which the C library provides): a host without that locale, or whose
C library maps letters otherwise, is refused the same way.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.metadata
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
# FarmHash's Fingerprint64 (TF's StringToHashBucketFast) modulo 2**63 - 1 of strings in each of its length
# branches (0-16, 17-32, 33-64 and longer bytes), non-ASCII among them: pyfarmhash's values, equal to TF's.
HASH_PROBE = {"": 1936946117179621456, "a": 3694432073954588132, "ünï 日本語": 1250730191355361501,
              "x" * 17: 2082709914559524774, "y" * 33: 8610735037765521150,
              "tfbridge " * 15: 8855840495975362269}
HASH_PROBE_BUCKETS = 2**63 - 1


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
        files = _installed_library_files(Path(list(spec.submodule_search_locations)[0]))
        refusals = []
        for directory in _private_directories():
            try:
                _LIBRARY = _load_private_copy(files, directory)
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


def _installed_library_files(package: Path) -> dict[str, bytes]:
    """The library and the libraries its wheel bundles (auditwheel's `<package>.libs`, which the library finds
    through its `$ORIGIN/../<package>.libs` rpath), by their paths relative to the package's parent; the
    library first.

    The bundled libraries get names of the copy's own (auditwheel's 8-hex tag in each name, soname and
    DT_NEEDED entry replaced by another of the same length): the dynamic linker shares a library by soname,
    and a copy loaded plainly after TensorFlow (`import onnxruntime_extensions`) has its libssl bound to
    TensorFlow's BoringSSL, which crashed the process at exit (SIGSEGV in the library's curl clean-up) once
    the private copy shared it."""
    library = next(p for p in package.iterdir() if p.name.startswith("_extensions_pydll") and p.suffix == ".so")
    bundled = package.parent / f"{package.name}.libs"
    files = [library] + (sorted(bundled.iterdir()) if bundled.is_dir() else [])
    renames = {}
    for name in (f.name for f in files[1:]):
        tag = re.fullmatch(r"(.+-)([0-9a-f]{8})(\.so.*)", name)
        if tag:
            renames[name] = f"{tag[1]}{hashlib.sha256(f'tfbridge {tag[2]}'.encode()).hexdigest()[:8]}{tag[3]}"

    def renamed(data: bytes) -> bytes:
        for old, new in renames.items():
            data = data.replace(old.encode(), new.encode())
        return data

    return {str(f.relative_to(package.parent).with_name(renames.get(f.name, f.name))): renamed(f.read_bytes())
            for f in files}


def _load_private_copy(files: dict[str, bytes], directory: Path) -> tuple[str, ctypes.CDLL]:
    """The library and its bundled libraries as a content-addressed tree in `directory` (this user's alone),
    the library freshly loaded from it."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid() or info.st_mode & 0o022:
        raise TextOpsError(f"{directory} is not a private directory of this user: refusing to load a library "
                           f"from it")
    digests = {name: hashlib.sha256(data).hexdigest() for name, data in files.items()}
    tree = directory / f"ortextensions-{hashlib.sha256(repr(sorted(digests.items())).encode()).hexdigest()[:16]}"
    # Code is loaded from these files: they must hold exactly the installed libraries' bytes.
    if not all((tree / name).is_file() and hashlib.sha256((tree / name).read_bytes()).hexdigest() == digest
               for name, digest in digests.items()):
        with staged(tree, directory=True) as staging:
            for name, data in files.items():
                (staging / name).parent.mkdir(parents=True, exist_ok=True)
                (staging / name).write_bytes(data)
    library = tree / next(iter(files))
    mode = os.RTLD_NOW | os.RTLD_LOCAL | getattr(os, "RTLD_DEEPBIND", 0)
    return str(library), ctypes.CDLL(str(library), mode=mode)


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
    """Runs normalize_text's lower-casing and replacement passes and the hash through onnxruntime and the library
    once per process; TextOpsError if any is wrong."""
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
    feeds = {"text": np.array(PROBE_TEXT, object), "keys": np.array(list(HASH_PROBE), object)}
    got, lowered, hashed = (out.tolist() for out in session.run(["out", "lowered", "hashed"], feeds))
    if hashed != list(HASH_PROBE.values()):
        wrong = next(key for key, value in zip(HASH_PROBE, hashed) if HASH_PROBE[key] != value)
        raise TextOpsError(f"onnxruntime-extensions {importlib.metadata.version('onnxruntime-extensions')}'s "
                           f"StringToHashBucketFast is not FarmHash's Fingerprint64, TensorFlow's hash (for {wrong!r} "
                           f"it gave {hashed[list(HASH_PROBE).index(wrong)]}, expected {HASH_PROBE[wrong]}): install "
                           f"the pinned onnxruntime-extensions==0.14.0 (0.15 hashes with std::hash), or score "
                           f"with the SavedModel")
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
    constants.append(helper.make_tensor("buckets", TensorProto.INT64, [1], [HASH_PROBE_BUCKETS]))
    nodes.append(helper.make_node("StringToHashBucketFast", ["keys", "buckets"], ["hashed"], domain=domain))
    graph = helper.make_graph(
        nodes, "text_ops_probe", [helper.make_tensor_value_info(name, TensorProto.STRING, [None])
                                  for name in ("text", "keys")],
        [helper.make_tensor_value_info(name, TensorProto.STRING, [None]) for name in ("out", "lowered")]
        + [helper.make_tensor_value_info("hashed", TensorProto.INT64, [None])],
        constants)
    model = helper.make_model(graph, ir_version=9, opset_imports=[helper.make_opsetid("", 20),
                                                                  helper.make_opsetid(domain, 1)])
    return model.SerializeToString()
