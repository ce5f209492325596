"""CSV is read alike by the feature stage (pyarrow) and the scorer (Spark): RFC 4180 quoting, with line breaks,
delimiters and doubled quotes inside quoted fields."""

from __future__ import annotations

from tfbridge.contracts import ModelManifest, RawColumn
from tft_features.inputs import read_csv

ROWS = [(0, '"two\nlines"', 1.5), (1, '"a, b"', 2.5), (2, '"say ""hi"""', 3.5), (3, '"crlf\r\nend"', 4.5),
        (4, "plain", 5.5)]
TEXT = {0: "two\nlines", 1: "a, b", 2: 'say "hi"', 3: "crlf\r\nend", 4: "plain"}


def test_quoted_line_breaks_read_alike_in_the_feature_stage_and_the_scorer(spark, tmp_path):
    from spark_infer.job import read_input

    path = tmp_path / "rows.csv"
    path.write_text("id,note,x\n" + "".join(f"{i},{note},{x}\n" for i, note, x in ROWS), newline="")
    columns = (RawColumn("id", "int", False), RawColumn("note", "string", False), RawColumn("x", "float", False))
    ours = read_csv(str(path), columns).to_pylist()
    assert {r["id"]: r["note"] for r in ours} == TEXT and len(ours) == len(ROWS)
    manifest = ModelManifest(inputs={"note": columns[1], "x": columns[2]}, input_names={"note": "note", "x": "x"},
                             outputs=("prediction",), label="y", task="regression", classes=None,
                             label_transform="none", versions={}, checksums={})
    theirs = read_input(spark, str(path), manifest, "csv").toPandas()
    assert {int(i): n for i, n in zip(theirs["id"], theirs["note"])} == TEXT
    assert {int(i): x for i, x in zip(theirs["id"], theirs["x"])} == {r["id"]: r["x"] for r in ours}
