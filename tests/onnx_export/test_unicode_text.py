"""Non-ASCII text and categories with line breaks: one rule in the feature stage, the SavedModel, ONNX and
Spark (README, "Transforms": normalize_text; "Your table as it is": text is read as Unicode NFC).

The engine tests run `tfbridge run` on a small table whose text column goes through [normalize_text,
vocabulary] and whose category column through [vocabulary], and compare the SavedModel and the ONNX graph
row by row on rows fed as every scorer feeds them (`load_model(...).feeds`: NFC). Before this rule, a
decomposed é was another token and category, CAFÉ stayed `cafÉ`, ’ “ ” — … and NBSP were letters, and a
category with a line break, or the category "", fell out of TFT's vocabulary file (one value per line) and
scored as unseen.
"""

from __future__ import annotations

import json
import re
import string
import unicodedata

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tensorflow as tf
import yaml

from tests.helpers import committed, decode_split, onnx_session, tf_inputs
from tests.onnx_export.test_lowerings import convert, run
from tests.onnx_export.test_parity import TransformOnly
from onnx_export.convert import convert_saved_model
from tf_train.model import save_raw_features_model
from tfbridge.contracts import FeaturesManifest, ModelManifest, PipelineConfig
from tfbridge.contracts.columns import PUNCTUATION_AND_WHITESPACE, PUNCTUATION_UNICODE_VERSION, vocabulary_value
from tfbridge.report import vocabulary_lines
from tfbridge.scoring import arrow_feeds, graph_inputs
from tft_features.analyzers import escaped_categories
from tft_features.mappers import normalize_text
from tft_features.preprocessing import vocabulary_name

NFD = lambda text: unicodedata.normalize("NFD", text)  # noqa: E731

# Each group: texts that must give the same tokens.
SAME_TOKENS = [
    ["CAFÉ crème brûlée", "café crème brûlée", NFD("café crème brûlée"), NFD("CAFÉ CRÈME BRÛLÉE")],
    ["don’t stop “now” — ok… «oui» ‘yes’", "don't stop \"now\" - ok... <oui> 'yes'", "DON’T STOP “NOW”–OK…OUI YES"],
    ["ΟΔΟΣ ΣΑΣ", "οδος σας", "οδοσ σασ", "ΟΔΟΣ σας"],
    ["İSTANBUL ẞ ǅ", "istanbul ß ǆ"],
    ["a\u00a0b\u2009c\u3000d\u2028e\u202fF", "a b c d e f"],
]
# Categories that must each get an id of their own; NFD twins must share it. "" is a category too (README,
# "Missing values and empty strings"), apart from a literal backslash and 0 (its escape).
CATEGORIES = ["Zürich", "line\nbreak", "line\r\nbreak", "line\rbreak", "linebreak", "line\\rbreak", "line\\nbreak",
              "back\\slash", "\n", "plain", "", "\\0", "vt\x0bff\x0cnel\x85ls\u2028end"]
UNSEEN = ["never seen", "line\n\nbreak", "Zurich"]


def training_table(n: int = 320) -> pa.Table:
    rng = np.random.default_rng(7)
    texts = [t for group in SAME_TOKENS for t in group]
    categories = [*CATEGORIES, NFD("Zürich")]
    text = [texts[i] for i in rng.integers(0, len(texts), n)]
    category = [categories[i] for i in rng.integers(0, len(categories), n)]
    x = rng.normal(0, 1, n)
    effect = {c: i / 3 for i, c in enumerate(CATEGORIES)}
    y = x + np.array([effect[unicodedata.normalize("NFC", c)] for c in category]) + rng.normal(0, 0.1, n)
    # every category and text at least once, in both forms
    text[:len(texts)], category[:len(categories)] = texts, categories
    return pa.table({"review": text, "cat": category, "x": x, "y": y})


def scoring_rows() -> pd.DataFrame:
    texts = [t for group in SAME_TOKENS for t in group] + ["never seen words", ""]
    categories = [*CATEGORIES, NFD("Zürich"), *UNSEEN]
    n = max(len(texts), len(categories))
    return pd.DataFrame({"review": [texts[i % len(texts)] for i in range(n)],
                         "cat": [categories[i % len(categories)] for i in range(n)],
                         "x": np.linspace(-2, 2, n)})


@pytest.fixture(scope="module")
def unicode_run(tmp_path_factory):
    from tfbridge.cli import main

    root = tmp_path_factory.mktemp("unicode")
    pq.write_table(training_table(), root / "raw.parquet")
    config = {"data": {"path": str(root / "raw.parquet")}, "label": "y", "task": "regression",
              "features": {"review": [{"normalize_text": {"stopwords": "none"}}, "vocabulary"],
                           "cat": ["vocabulary"], "x": ["z_score"]},
              "output": str(root / "out"),
              "train": {"epochs": 1, "batch_size": 32, "hidden_units": [8], "workers": 1}}
    (root / "c.yaml").write_text(yaml.safe_dump(config))
    assert main(["run", "--config", str(root / "c.yaml")]) == 0
    return PipelineConfig.from_yaml(root / "c.yaml").layout


@pytest.fixture(scope="module")
def engines(unicode_run, tmp_path_factory):
    """The transform alone (ids per feature) and the whole model, each as SavedModel and ONNX, on the same feeds."""
    from spark_infer import load_model

    layout = unicode_run
    features = FeaturesManifest.read(layout.features_manifest_path)
    manifest = ModelManifest.read(layout.model_manifest_path)
    path = tmp_path_factory.mktemp("transform") / "saved_model"
    save_raw_features_model(TransformOnly(str(features.transform_dir(layout.features_dir)), features, dict(features.outputs), None, None),
                            str(path))
    transform_onnx = convert_saved_model(path, manifest.input_names.values()).SerializeToString()
    model = load_model(layout.model_dir)
    rows = scoring_rows()
    feeds = model.feeds(rows)
    runner = onnx_session(transform_onnx)
    names = [o.name for o in runner.get_outputs()]
    saved = tf.saved_model.load(str(path)).signatures["serving_default"](**tf_inputs(feeds))
    serve = tf.saved_model.load(str(committed(layout).saved_model_dir)).signatures["serving_default"]
    return {
        "rows": rows, "feeds": feeds, "model": model,
        "stats": json.loads(committed(layout).stats_path.read_text())["features"],
        "onnx": {k[2:]: v for k, v in zip(names, runner.run(names, feeds))},
        "tf": {k[2:]: v.numpy() for k, v in saved.items()},
        "prediction": {"onnx": model.predict(rows)["prediction"],
                       "tf": serve(**tf_inputs(feeds))["prediction"].numpy()},
    }


def test_tf_and_onnx_agree_row_by_row(engines):
    for name in ("review", "cat", "x"):
        assert engines["onnx"][name].dtype == engines["tf"][name].dtype, name
        if engines["tf"][name].dtype.kind in "iu":
            np.testing.assert_array_equal(engines["onnx"][name], engines["tf"][name], err_msg=name)
        else:
            np.testing.assert_allclose(engines["onnx"][name], engines["tf"][name], atol=1e-6, err_msg=name)
    want = engines["prediction"]["tf"]
    np.testing.assert_allclose(engines["prediction"]["onnx"], want, atol=1e-5 * float(np.std(want)), rtol=1e-5)


@pytest.mark.parametrize("engine", ["tf", "onnx"])
def test_composed_and_decomposed_upper_and_lower_case_give_the_same_tokens(engines, engine):
    rows = engines["rows"]["review"].tolist()
    ids = engines[engine]["review"]
    for group in SAME_TOKENS:
        tokens = {tuple(ids[rows.index(text)].tolist()) for text in group}
        assert len(tokens) == 1, (group, tokens)
    oov = engines["stats"]["review"]["vocabulary_size"]
    for text, count in (("CAFÉ crème brûlée", 3), ("a b c d e f", 6), ("ΟΔΟΣ ΣΑΣ", 2)):
        tokens = ids[rows.index(text)]
        assert ((tokens >= 0) & (tokens < oov)).sum() == count, text  # known tokens (padding is -1)


@pytest.mark.parametrize("engine", ["tf", "onnx"])
def test_every_category_seen_in_training_has_its_own_id_line_breaks_and_empty_included(unicode_run, engines, engine):
    rows = engines["rows"]["cat"].tolist()
    ids = engines[engine]["cat"].reshape(-1)
    size = engines["stats"]["cat"]["vocabulary_size"]
    assert size == len(CATEGORIES)  # NFD Zürich is Zürich; nothing left out
    known = {category: int(ids[rows.index(category)]) for category in CATEGORIES}
    assert sorted(known.values()) == list(range(size)), known
    assert int(ids[rows.index(NFD("Zürich"))]) == known["Zürich"]
    assert all(int(ids[rows.index(category)]) == size for category in UNSEEN)  # the one OOV bucket
    # the ids the trainer read for the same categories (rows joined by their label)
    raw = training_table()
    row_of = {float(np.float32(y)): i for i, y in enumerate(raw.column("y").to_pylist())}
    trained = {}
    for split in ("train", "eval"):
        decoded = decode_split(unicode_run.features_dir, split)
        for y, category_id in zip(decoded["y"], decoded["cat"].reshape(-1)):
            trained[unicodedata.normalize("NFC", raw.column("cat")[row_of[float(y)]].as_py())] = int(category_id)
    assert trained == known
    # the report reads the vocabulary file back: each id's label is its category
    import tensorflow_transform as tft

    path = tft.TFTransformOutput(str(committed(unicode_run).features_dir)).vocabulary_file_by_name(
        vocabulary_name("cat", 0))
    assert vocabulary_lines(open(path, "rb").read().decode()) == sorted(known, key=known.get)


def test_arrow_feeds_read_strings_as_the_pandas_feeds_do(engines):
    """Spark's hand-off (Arrow) gives the same NFC strings as the pandas one the engines were compared on."""
    model, rows = engines["model"], engines["rows"]
    inputs = graph_inputs(model.manifest)
    table = pa.Table.from_pandas(rows, preserve_index=False)
    got = arrow_feeds({name: table.column(raw.name).combine_chunks() for name, raw in inputs.items()}, inputs)
    for name, values in engines["feeds"].items():
        assert got[name].tolist() == values.tolist(), name
    fed = engines["feeds"]["cat"].tolist()
    assert fed.count("Zürich") == rows["cat"].map(lambda c: unicodedata.normalize("NFC", c) == "Zürich").sum() > 1
    assert NFD("Zürich") not in fed


def test_spark_scores_each_row_as_the_onnx_graph_does(engines, spark, tmp_path):
    """Through Parquet and Spark's Arrow hand-off: NFD twins and line-break categories score as in-process ONNX."""
    from spark_infer import score
    from spark_infer.job import read_input

    rows = engines["rows"].assign(row_id=np.arange(len(engines["rows"])))
    pq.write_table(pa.Table.from_pandas(rows, preserve_index=False), tmp_path / "rows.parquet")
    df = read_input(spark, str(tmp_path / "rows.parquet"), engines["model"].manifest)
    got = score(df, engines["model"]).select("row_id", "prediction").toPandas()
    got = got.assign(row_id=got["row_id"].astype(int)).sort_values("row_id")["prediction"].to_numpy()
    np.testing.assert_allclose(got, engines["prediction"]["onnx"], rtol=1e-6, atol=1e-6)


def test_lower_casing_matches_tf_on_every_letter_tf_knows():
    """StringLower(utf-8) -> StringNormalizer(C.UTF-8): equal on every cased code point except İ (TF: i + U+0307,
    which normalize_text deletes) and letters newer than TF's ICU, which TF leaves as they are."""
    letters = [chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF
               and unicodedata.category(chr(c)) in ("Lu", "Lt", "Ll")]
    session, ops = convert(lambda s: tf.strings.lower(s, encoding="utf-8"), tf.TensorSpec([None], tf.string))
    assert ops["StringNormalizer"] == 1
    got = run(session, np.array(letters, object))[0].tolist()
    want = [v.decode() for v in tf.strings.lower(letters, encoding="utf-8").numpy()]
    differ = {letter: (a, b) for letter, a, b in zip(letters, got, want) if a != b}
    assert differ.pop("İ") == ("i", "i\u0307")
    assert all(tf_lower == letter for letter, (_, tf_lower) in differ.items()), differ


def test_normalize_text_gives_the_same_tokens_in_both_engines_on_unicode_text():
    text = np.array(["CAFÉ ÀÉÎÕÜ ΣΑΣ ǅ İ ẞ", "ΟΔΟΣ. Σ ΣΑ ς", "don’t ‘x’ “y” «z» a—b–c…d", "x\u00a0y\u2009z\u3000w\u2028v",
                     "¿Qué? ¡Sí! 東京。大阪、京都 ₹5 €5 x≠y 👍🏽 😀", "Größe STRASSE", "", "tab\tnew\nline\r\n"], object)

    def tokens(s):
        sparse = normalize_text(s, "t", stopwords="none")[0].to_sparse()
        return sparse.indices, sparse.values

    session, _ = convert(tokens, tf.TensorSpec([None], tf.string))
    got, want = run(session, text), tokens(tf.constant(text.astype(str)))
    np.testing.assert_array_equal(got[0], want[0].numpy())
    values = [v.decode() for v in want[1].numpy()]
    assert got[1].tolist() == values
    assert values[:11] == ["café", "àéîõü", "σασ", "ǆ", "i", "ß", "οδοσ", "σ", "σα", "σ", "dont"]
    assert {"x", "y", "z", "a", "b", "c", "d", "東京", "大阪", "京都", "5", "👍", "😀"} <= set(values)


def character_class(member) -> str:
    """The regex class of every code point below U+20000 where `member(char)` holds, as literal ranges."""
    ranges: list[list[int]] = []
    for code in range(0x20000):
        if not 0xD800 <= code <= 0xDFFF and member(chr(code)):  # surrogates are not text
            if ranges and ranges[-1][1] == code - 1:
                ranges[-1][1] = code
            else:
                ranges.append([code, code])

    def literal(code: int) -> str:
        char = chr(code)
        if not char.isprintable() and code < 0x100:
            return f"\\x{code:02x}"
        return "\\" + char if char in string.punctuation else char

    return "[" + "".join(literal(a) if a == b else f"{literal(a)}-{literal(b)}" for a, b in ranges) + "]"


SPACED_CATEGORIES = {"Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po", "Sm", "Sc", "Sk", "Zs", "Zl", "Zp"}


@pytest.mark.skipif(unicodedata.unidata_version != PUNCTUATION_UNICODE_VERSION,
                    reason=f"the class is pinned to Unicode {PUNCTUATION_UNICODE_VERSION} (Python 3.11's tables)")
def test_the_punctuation_class_is_unicodes_categories_as_pinned():
    assert PUNCTUATION_AND_WHITESPACE == character_class(
        lambda char: unicodedata.category(char) in SPACED_CATEGORIES or char in "\t\n\v\f\r\x85")


@pytest.mark.skipif(unicodedata.unidata_version != PUNCTUATION_UNICODE_VERSION,
                    reason=f"the class is pinned to Unicode {PUNCTUATION_UNICODE_VERSION} (Python 3.11's tables)")
def test_punctuation_and_whitespace_are_unicode_categories_in_both_engines():
    """The pass against Unicode's own tables: P*, Sm, Sc, Sk, Z* and the White_Space controls become spaces."""
    chars = [chr(c) for c in range(1, 0x20000) if not 0xD800 <= c <= 0xDFFF]  # onnxruntime cuts strings at NUL
    spaced = {c for c in chars if unicodedata.category(c)[0] in "PZ" or unicodedata.category(c) in ("Sm", "Sc", "Sk")
              or c in "\t\n\v\f\r\x85"}
    session, _ = convert(lambda s: tf.strings.regex_replace(s, PUNCTUATION_AND_WHITESPACE, " "),
                         tf.TensorSpec([None], tf.string))
    got = run(session, np.array(chars, object))[0].tolist()
    want = [v.decode() for v in tf.strings.regex_replace(chars, PUNCTUATION_AND_WHITESPACE, " ").numpy()]
    assert got == want
    assert {c for c, out in zip(chars, got) if out == " "} == spaced | {" "}
    assert {"’", "“", "”", "—", "–", "…", "«", "\u00a0", "\u2009", "\u3000", "\u2028", "。"} <= spaced


def test_vocabulary_escapes_keep_categories_apart_without_line_breaks_or_empty_lines():
    values = ["a\nb", "a\\nb", "a\rb", "a\\rb", "a\r\nb", "a\\\\rb", "\\", "\\r", "\r", "\n", "\\n", "", "\\0", "0",
              "\\\\0", "\\\n", "\x0b\x0c\x85\u2028\u2029", "plain", "é"]

    session, ops = convert(escaped_categories, tf.TensorSpec([None], tf.string))
    assert ops["Where"] == 1
    got = run(session, np.array(values, object))[0].tolist()
    assert got == [v.decode() for v in escaped_categories(tf.constant(values)).numpy()]
    assert len(set(got)) == len(values) and not any(re.search("[\r\n]", v) or v == "" for v in got)
    assert got[0] == "a\\nb" and got[values.index("")] == "\\0" and got[-2:] == ["plain", "é"]
    assert [vocabulary_value(v) for v in got] == values
    # the report splits a vocabulary file at "\n" only (not at \v, \f, U+0085, U+2028, U+2029 as splitlines does)
    assert vocabulary_lines("".join(f"{v}\n" for v in got)) == values
