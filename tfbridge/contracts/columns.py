"""A raw column: its name inside the graphs, its type there, whether it may be missing, and how values read.

The stages agree on these rules so that training and scoring read a table alike: the feature stage
(Beam), the SavedModel and ONNX signatures, and the Spark scorer all go through them.
"""

from __future__ import annotations

import dataclasses
import keyword
import re
import unicodedata

from tfbridge.contracts.errors import ConfigError

# In a CSV number column these fields are missing values (R writes NA, pandas an empty field); in a
# string column every field is text, and only an empty one is missing (see README, "Empty strings").
CSV_NULL_VALUES = ("", "NA", "N/A", "NaN", "nan", "null", "NULL")

# normalize_text's punctuation pass, shared by the transform, its ONNX lowering and the scorer's self-check.
# ASCII punctuation; apostrophes are deleted first (don't -> dont), the rest become spaces. Tabs and
# newlines become spaces in the same pass: the split does not change, and the ONNX export, whose
# split breaks on spaces only, needs no replace pass of its own (onnx_export.lowerings.string_split_v2).
PUNCTUATION_AND_WHITESPACE = r"""[!"#$%&()*+,\-./:;<=>?@\[\\\]^_`{|}~\t\n\v\f\r]"""

RAW_DTYPES = ("float", "int", "string")


@dataclasses.dataclass(frozen=True)
class RawColumn:
    """A column of the user's table as the transform reads it and the exported models take it.

    dtype: "float" (float32 in the graphs), "int" (int64) or "string", one value per row. A nullable
    column keeps its missing values for the transform to impute: a model takes NaN (numbers) or ""
    (strings) for one. Elsewhere a missing number is an error and a missing string is "".
    """

    name: str  # as the data names it
    dtype: str  # one of RAW_DTYPES
    nullable: bool

    @property
    def graph_name(self) -> str:
        """Its name inside the transform and the signatures (`graph_input_name`)."""
        return graph_input_name(self.name)


def graph_input_name(column: str) -> str:
    """The name a raw column has inside the transform, the SavedModel signature and the ONNX graph.

    The user's column names are theirs (`Home Team`, `sample.yr`, `price ($)`, `2nd_visit`, `class`,
    `Größe`, `価格`); TF accepts only some names (the signature lower-cases them, a Python keyword is
    not a valid parameter name, an op name cannot hold spaces). Inside, a column is lower-case ASCII
    letters, digits and single underscores, starting with a letter and never a keyword: accents are
    dropped, other letters become their code point (`u4fa1`), anything else `_`. The manifests map
    each raw column to it, and every consumer feeds the graph through that mapping.
    """
    letters = []
    for char in unicodedata.normalize("NFKD", column.lower()):
        if unicodedata.category(char) == "Mn":  # accents: é -> e
            continue
        if char.isascii():
            letters.append(char if char.isalnum() else "_")
        else:  # other scripts keep their identity: 価格 -> u4fa1_u683c, ß -> udf
            letters.append(f"_u{ord(char):x}_" if char.isalnum() else "_")
    name = re.sub(r"_+", "_", "".join(letters)).strip("_")
    if not name or not name[0].isalpha() or keyword.iskeyword(name) or keyword.issoftkeyword(name):
        name = f"c_{name}".rstrip("_")
    return name


def graph_input_names(columns, where: str) -> dict[str, str]:
    """{column: graph_input_name(column)}; ConfigError naming both columns when two map to one name."""
    names: dict[str, str] = {}
    taken: dict[str, str] = {}
    for column in columns:
        name = graph_input_name(column)
        if name in taken and taken[name] != column:
            raise ConfigError(f"{where}: columns '{taken[name]}' and '{column}' both become '{name}' inside the "
                              f"model (names are lower-cased and punctuation becomes '_'); rename one of them")
        taken[name] = column
        names[column] = name
    return names
