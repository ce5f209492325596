"""Users' own preprocessing_fns, for the `preprocessing_fn: module:function` escape hatch."""

import tensorflow as tf
import tensorflow_transform as tft


def scaled_x(inputs):
    return {"x_scaled": tft.scale_to_0_1(tf.squeeze(inputs["x"], 1))}


def fails_in_the_pipeline(inputs):
    raise RuntimeError("deliberate failure inside the Beam job")


def three_phases(inputs):
    """Three chained analyzers: the in-process FnApiRunner stalls on these, the stage reruns them."""
    x = tf.squeeze(inputs["x"], 1)
    return {"x3": tft.scale_to_z_score(tft.scale_to_0_1(tft.scale_to_z_score(x)))}


def awkward_names(inputs):
    """Reads columns by the user's names and names its outputs freely (spaces, parentheses, capitals)."""
    team = tf.squeeze(inputs["Home Team"], 1)
    return {"Home Team ids": tft.compute_and_apply_vocabulary(team, num_oov_buckets=1),
            "price (z)": tft.scale_to_z_score(tf.squeeze(inputs["price ($)"], 1))}
