"""The one TFRecord schema of kdem-tf.

Every image is one `tf.train.Example` with the features below. The Beam writer
(`preprocess.py`), the tf.data parser (`input_pipeline.py`), the TFX components
and serving all use this module, so a field is named and typed in one place.
"""
from __future__ import annotations

import tensorflow as tf

# The modality vocabulary is the image contract's; re-exported here for the schema's users.
from kdem_tf.image_contract import INFRARED, MODALITIES, MODALITY_INDEX, VISIBLE, modality_index  # noqa: F401

# The split names preprocessing writes are each dataset's (`Dataset.splits`, kdem_tf/datasets/);
# every dataset has the training split.
from kdem_tf.datasets.base import TRAIN  # noqa: E402,F401

IMAGE = "image"            # the original encoded bytes (JPEG/PNG/BMP), or a lossless PNG of them
PERSON_ID = "person_id"    # the dataset's own identity number
LABEL = "label"            # contiguous training label from 0; -1 outside the train split
CAMERA = "camera"          # camera number (SYSU 1..6; RegDB 1 visible, 2 thermal)
MODALITY = "modality"      # "visible" or "infrared"
SPLIT = "split"            # one of the split names above
PATH = "path"              # source path relative to the data root, e.g. "cam3/0001/0001.jpg"
HEIGHT = "height"          # the original image height (every stage resizes with the image contract)
WIDTH = "width"

FEATURE_SPEC = {
    IMAGE: tf.io.FixedLenFeature([], tf.string),
    PERSON_ID: tf.io.FixedLenFeature([], tf.int64),
    LABEL: tf.io.FixedLenFeature([], tf.int64),
    CAMERA: tf.io.FixedLenFeature([], tf.int64),
    MODALITY: tf.io.FixedLenFeature([], tf.string),
    SPLIT: tf.io.FixedLenFeature([], tf.string),
    PATH: tf.io.FixedLenFeature([], tf.string),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64),
    WIDTH: tf.io.FixedLenFeature([], tf.int64),
}


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(*, image: bytes, person_id: int, label: int, camera: int, modality: str,
                 split: str, path: str, height: int, width: int) -> tf.train.Example:
    """Builds one schema-conformant `tf.train.Example`."""
    modality_index(modality, f"{path}: modality")
    return tf.train.Example(features=tf.train.Features(feature={
        IMAGE: _bytes(image),
        PERSON_ID: _int(person_id),
        LABEL: _int(label),
        CAMERA: _int(camera),
        MODALITY: _bytes(modality.encode()),
        SPLIT: _bytes(split.encode()),
        PATH: _bytes(path.encode()),
        HEIGHT: _int(height),
        WIDTH: _int(width),
    }))


def parse_example(serialized: tf.Tensor) -> dict:
    """Parses one serialized Example (scalar string tensor) into a dict of tensors."""
    return tf.io.parse_single_example(serialized, FEATURE_SPEC)


def parse_examples(serialized: tf.Tensor) -> dict:
    """Parses a batch of serialized Examples ([N] string tensor)."""
    return tf.io.parse_example(serialized, FEATURE_SPEC)


def split_dir(split: str, tfx_layout: bool = False) -> str:
    """Folder of one split: `<split>` in our layout, `Split-<split>` inside a TFX Examples artifact."""
    return f"Split-{split}" if tfx_layout else split


def split_file_patterns(root: str, split: str) -> list:
    """Globs that match the shards of one split, in our layout or a TFX Examples artifact's."""
    root = root.rstrip("/")
    return [f"{root}/{split_dir(split, layout)}/{split}-*.tfrecord.gz" for layout in (False, True)]
