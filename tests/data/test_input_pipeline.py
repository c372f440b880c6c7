"""tf.data input: P×K paired batches, deterministic sampling, augmentation, evaluation batches."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kdem_tf.data import input_pipeline as ip
from kdem_tf.data import preprocess, synthetic
from kdem_tf.image_contract import NORMALIZATIONS

IN_PROCESS = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]


@pytest.fixture(scope="module")
def tfrecords(tmp_path_factory):
    base = tmp_path_factory.mktemp("ip")
    root = synthetic.generate_sysu(str(base / "raw"), identities=10, images_per_camera=2, progress=False)
    out = str(base / "tfr")
    preprocess.run_preprocess(preprocess.plan_splits("sysu", root), root, out,
                              pipeline_options=preprocess.local_pipeline_options(IN_PROCESS))
    return out


@pytest.fixture(scope="module")
def train_split(tfrecords):
    return ip.load_split(tfrecords, "train")


def test_every_batch_holds_p_ids_times_k_per_modality(train_split):
    dataset, _ = ip.train_dataset(train_split, (48, 24), num_identities=3, num_instances=2, seed=1)
    for inputs, labels in dataset.take(6):
        assert inputs["visible"].shape == (6, 48, 24, 3) and inputs["infrared"].shape == (6, 48, 24, 3)
        label_v, label_i = labels["label_v"].numpy(), labels["label_i"].numpy()
        np.testing.assert_array_equal(label_v, label_i)  # pair k shares one identity
        ids, counts = np.unique(label_v, return_counts=True)
        assert len(ids) == 3 and set(counts) == {2}


def test_sampler_draws_each_modality_from_its_own_pool(train_split):
    sampler = ip.IdentitySampler(train_split.labels, train_split.modalities, 3, 2, seed=0)
    for b in range(5):
        visible, infrared = sampler.batch(0, b)
        assert set(train_split.modalities[visible]) == {0} and set(train_split.modalities[infrared]) == {1}
        np.testing.assert_array_equal(train_split.labels[visible], train_split.labels[infrared])
    np.testing.assert_array_equal(sampler.batch(3, 2)[0], ip.IdentitySampler(
        train_split.labels, train_split.modalities, 3, 2, seed=0).batch(3, 2)[0])
    assert not np.array_equal(sampler.batch(0, 0)[0], sampler.batch(1, 0)[0])


def test_replicas_get_whole_pk_batches(train_split):
    dataset, _ = ip.train_dataset(train_split, (48, 24), num_identities=2, num_instances=2, replicas=2)
    _, labels = next(iter(dataset))
    label_v = labels["label_v"].numpy()
    assert len(label_v) == 8
    for half in (label_v[:4], label_v[4:]):  # each replica's half is a complete P×K batch
        assert len(np.unique(half)) == 2 and set(np.unique(half, return_counts=True)[1]) == {2}


def test_too_few_identities_is_a_clear_error(train_split):
    with pytest.raises(ip.InputError, match="only .* training identities have both"):
        ip.IdentitySampler(train_split.labels, train_split.modalities, num_identities=500)


def test_dataset_is_deterministic_for_a_seed(train_split):
    first = [x["visible"].numpy() for x, _ in ip.train_dataset(train_split, (48, 24), 2, 2, seed=5)[0].take(2)]
    again = [x["visible"].numpy() for x, _ in ip.train_dataset(train_split, (48, 24), 2, 2, seed=5)[0].take(2)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)


def test_augment_normalises_and_erases():
    image = tf.fill([48, 24, 3], 200.0)
    out = ip.augment(image, tf.constant([1, 2], tf.int64), (48, 24), erasing=1.0)
    torchvision = NORMALIZATIONS["torchvision"]  # the normalisation of a bare (48, 24): as_contract
    normalised = (200.0 / 255.0 - np.array(torchvision["mean"])) / np.array(torchvision["std"])
    values = out.numpy().reshape(-1, 3)
    assert out.shape == (48, 24, 3)
    # Padding (zeros before normalisation) and erasing (zeros after) leave other values only.
    interior = np.all(np.isclose(values, normalised, atol=1e-5), axis=1)
    erased = np.all(values == 0.0, axis=1)
    assert interior.any() and erased.any()
    erased_fraction = erased.mean()
    assert 0.0 < erased_fraction <= 0.45


def test_crop_padding_scales_with_height_and_bounds_the_shift():
    assert [ip.crop_padding(h) for h in (288, 128, 64, 16)] == [10, 4, 2, 1]
    # A white 64x32 image: pad 2 → the crop shows at most 2 black rows/columns on each side.
    image = tf.fill([64, 32, 3], 255.0)
    shifted = False
    for seed in range(20):
        out = ip.augment(image, tf.constant([seed, 7], tf.int64), (64, 32), erasing=0.0).numpy()
        black = np.all(out < 0, axis=2)  # padding: 0 before normalisation → negative after
        rows, cols = np.where(black.all(axis=1))[0], np.where(black.all(axis=0))[0]
        assert len(rows) <= 2 and len(cols) <= 2
        shifted = shifted or bool(black.any())
    assert shifted  # some crops do show padding


def test_channel_augment_keeps_shape_and_values():
    image = tf.random.uniform([8, 4, 3], 0, 255, seed=1)
    for seed in range(6):
        out = ip.channel_augment(image, tf.constant([seed, 0], tf.int64)).numpy()
        channels_equal = np.allclose(out[..., 0], out[..., 1]) and np.allclose(out[..., 1], out[..., 2])
        assert np.allclose(out, image.numpy()) or channels_equal


def test_eval_dataset_yields_metadata(tfrecords):
    batches = list(ip.eval_dataset(tfrecords, "query", (48, 24), batch_size=4))
    assert all(b["image"].shape[1:] == (48, 24, 3) for b in batches)
    assert {int(m) for b in batches for m in b["modality"].numpy()} == {1}
    assert all(p.decode().startswith(("cam3/", "cam6/")) for b in batches for p in b["path"].numpy())


def test_missing_split_names_the_folder(tmp_path):
    with pytest.raises(ip.InputError, match="no TFRecord shards for split 'train'"):
        ip.load_split(str(tmp_path), "train")
