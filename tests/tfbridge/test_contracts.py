"""The pipeline config contract: what parses, and errors that name the key."""

import pytest

from tfbridge.contracts import ConfigError, PipelineConfig, TrainConfig, TransformStep, graph_input_name

BASE = {"data": {"path": "d.parquet"}, "label": "price", "task": "regression",
        "features": {"carat": ["box_cox", "z_score"]}, "output": "runs/x"}


def config(**changes):
    raw = {**BASE, **changes}
    return PipelineConfig.from_dict({k: v for k, v in raw.items() if v is not None}, source="c.yaml")


def test_issue_example_parses():
    cfg = config(features={
        "carat": ["box_cox", "z_score"], "cut": ["vocabulary"],
        "depth": [{"bucketize": {"num_buckets": 10}}],
        "x": [{"polynomial": {"degree": 2, "with": ["y", "z"]}}],
        "comment": [{"normalize_text": {"stopwords": "english"}}, {"vocabulary": {"top_k": 5000}}],
        "table": [{"impute": "mean"}]})
    assert cfg.features["depth"] == (TransformStep("bucketize", {"num_buckets": 10}),)
    assert cfg.features["table"] == (TransformStep("impute", {"": "mean"}),)
    assert cfg.data.format == "parquet" and cfg.split.eval_fraction == 0.2
    assert PipelineConfig.from_dict(cfg.to_dict()).features == cfg.features


def test_train_section_defaults_and_round_trip():
    assert config().train == TrainConfig()
    cfg = config(train={"hidden_units": [], "epochs": 3, "label_transform": "log", "embedding_dim": 4})
    assert cfg.train.hidden_units == () and cfg.train.epochs == 3 and cfg.train.batch_size is None
    assert PipelineConfig.from_dict(cfg.to_dict()).train == cfg.train


@pytest.mark.parametrize("changes, needle", [
    ({"label": None}, "missing required key 'label'"),
    ({"task": "ranking"}, "'task' must be one of"),
    ({"features": None}, "missing 'features'"),
    ({"preprocessing_fn": "pkg.mod:fn"}, "either 'features' or 'preprocessing_fn'"),
    ({"features": None, "preprocessing_fn": "no_colon"}, "package.module:function"),
    ({"features": {"carat": []}}, "features.carat: expected a non-empty list"),
    ({"features": {"carat": [{"a": 1, "b": 2}]}}, "features.carat: a transform step"),
    ({"features": {"price": ["z_score"]}}, "label 'price' cannot also be a feature"),
    ({"split": {"eval_fraction": 1.5}}, "split.eval_fraction"),
    ({"colour": 1}, "unknown key(s) ['colour']"),
    ({"data": {"path": "x.txt", "format": "json"}}, "'data.format' must be one of"),
    ({"train": {"epoch": 3}}, "unknown key(s) train.['epoch']"),
    ({"train": {"epochs": 0}}, "'train.epochs' must be a positive integer"),
    ({"train": {"hidden_units": [64, "x"]}}, "'train.hidden_units' must be a list of positive integers"),
    ({"train": {"learning_rate": -1}}, "'train.learning_rate' must be a positive number"),
    ({"train": {"label_transform": "sqrt"}}, "'train.label_transform' must be one of"),
    ({"train": {"validation_fraction": 0.9}}, "'train.validation_fraction' must be a number in [0, 0.5]"),
    ({"train": {"batch_size": 0}}, "'train.batch_size' must be a positive integer"),
    ({"train": {"patience": 0}}, "'train.patience' must be a positive integer"),
    ({"train": {"workers": "many"}}, "'train.workers' must be a positive integer or \"auto\""),
    ({"train": {"workers": 0}}, "'train.workers' must be a positive integer or \"auto\""),
    ({"train": {"sync_every": 0}}, "'train.sync_every' must be a positive integer"),
    ({"train": {"sync_every": 65}}, "'train.sync_every' must be at most 64"),
    ({"task": "binary", "train": {"label_transform": "log"}}, "applies to regression only"),
    ({"train": {"class_weight": "balanced"}}, "'train.class_weight' applies to binary and multiclass"),
    ({"task": "binary", "train": {"class_weight": "auto"}}, "'train.class_weight' must be one of"),
    ({"train": {"numeric_embedding": "fourier"}}, "'train.numeric_embedding' must be one of"),
])
def test_bad_config_names_the_key(changes, needle):
    with pytest.raises(ConfigError, match="c.yaml") as err:
        config(**changes)
    assert needle in str(err.value)


def test_yaml_is_read_with_safe_load(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("!!python/object/apply:os.system ['echo unsafe']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        PipelineConfig.from_yaml(path)




@pytest.mark.parametrize("column, name", [
    ("Home Team", "home_team"), ("sample.yr", "sample_yr"), ("price ($)", "price"), ("2nd_visit", "c_2nd_visit"),
    ("class", "c_class"), ("lambda", "c_lambda"), ("match", "c_match"), ("Größe", "gro_udf_e"), ("café", "cafe"),
    ("価格", "u4fa1_u683c"), ("", "c"), ("_private", "private"), ("Action", "action"), ("self", "c_self"),
])
def test_graph_input_names_are_valid_tf_and_python_names(column, name):
    import keyword

    assert graph_input_name(column) == name
    assert name.isidentifier() and name.isascii() and name == name.lower() and name[0].isalpha()
    assert not keyword.iskeyword(name) and not keyword.issoftkeyword(name)


def test_a_column_named_self_saves_in_a_serving_signature(tmp_path):
    """TF's signature wrapper takes `self`: an input of that name made tf.saved_model.save fail."""
    import tensorflow as tf

    module = tf.Module()
    names = [graph_input_name(c) for c in ("a", "self")]
    module.serve = tf.function(lambda raw: {"out": raw[names[0]] + raw[names[1]]},
                               input_signature=[{n: tf.TensorSpec([None], tf.float32, name=n) for n in names}])
    tf.saved_model.save(module, str(tmp_path / "m"),
                        signatures={"serving_default": module.serve.get_concrete_function()})
    loaded = tf.saved_model.load(str(tmp_path / "m")).signatures["serving_default"]
    assert float(loaded(a=tf.constant([1.0]), c_self=tf.constant([2.0]))["out"][0]) == 3.0
