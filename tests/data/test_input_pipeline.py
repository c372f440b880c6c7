"""tf.data input: P×K paired batches, deterministic sampling, augmentation, evaluation batches."""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from kdem_tf.data import input_pipeline as ip
from kdem_tf.image_contract import NORMALIZATIONS

@pytest.fixture(scope="module")
def tfrecords(tiny_tfrecords):
    """The session's preprocessed tiny set (tests/conftest.py: 8 identities)."""
    return tiny_tfrecords


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


# ----------------------------------------------------------------------------- resume: global batch numbers


def test_sampler_from_a_start_batch_continues_the_sequence_from_zero(train_split):
    sampler = ip.IdentitySampler(train_split.labels, train_split.modalities, 3, 4, seed=3)
    size = 12
    from_zero = [next(it) for it in [sampler.pairs(0)] for _ in range(7 * size)]
    assert sampler.batches_per_epoch < 7  # the run crosses a sampler epoch
    from_five = [next(it) for it in [sampler.pairs(5)] for _ in range(2 * size)]
    assert from_five == from_zero[5 * size:]
    assert [c for _, _, c in from_zero] == list(range(7 * size))  # element numbers are global


def test_a_dataset_started_at_batch_n_equals_batch_n_of_the_full_one(train_split):
    # Pixels, so that augmentation seeds replayed from element 0 (the resume bug) fail too.
    kwargs = dict(num_identities=2, num_instances=2, seed=4, erasing=0.5, channel_augmentation=True)
    full = [x for x, _ in ip.train_dataset(train_split, (48, 24), **kwargs)[0].take(4)]
    resumed = next(iter(ip.train_dataset(train_split, (48, 24), start_batch=3, **kwargs)[0]))[0]
    for stream in ("visible", "infrared"):
        np.testing.assert_array_equal(resumed[stream].numpy(), full[3][stream].numpy())
        assert not np.array_equal(full[0][stream].numpy(), full[3][stream].numpy())


# ----------------------------------------------------------------------------- each augmentation branch


TORCHVISION_MEAN = np.array(NORMALIZATIONS["torchvision"]["mean"])
TORCHVISION_STD = np.array(NORMALIZATIONS["torchvision"]["std"])


def _pixels(normalised: np.ndarray) -> np.ndarray:
    """augment's output (torchvision normalisation: the default contract of a bare size) back to 0..255."""
    return (normalised * TORCHVISION_STD + TORCHVISION_MEAN) * 255.0


def _quadrants(height: int = 64, width: int = 32) -> np.ndarray:
    """A picture telling a flip, a shift and a channel change apart: the left half red-ish, the
    right half blue-ish, one bright row near the top."""
    image = np.zeros((height, width, 3), np.float32)
    image[:, : width // 2] = (200, 60, 20)
    image[:, width // 2:] = (20, 90, 230)
    image[10] = (250, 250, 250)
    return image


SEEDS = range(24)


def _augmented(image, erasing=0.0, channel=False):
    return [_pixels(ip.augment(tf.constant(image), tf.constant([s, 11], tf.int64), image.shape[:2],
                               erasing=erasing, channel=channel).numpy()) for s in SEEDS]


def test_flip_fires_for_some_seeds_and_not_others():
    image = _quadrants()
    flipped = [bool(out[32, 2, 2] > out[32, 2, 0]) for out in _augmented(image)]  # blue on the left
    assert 0 < sum(flipped) < len(flipped)


def test_crop_shifts_for_some_seeds_and_not_others():
    image = _quadrants()
    rows = [int(np.argmax(out[:, 16, 1])) for out in _augmented(image)]  # where the bright row went
    pad = ip.crop_padding(64)
    assert set(rows) <= set(range(10 - pad, 10 + pad + 1)) and len(set(rows)) > 1 and 10 in rows


def test_erasing_fires_at_its_probability_and_never_when_off():
    image = _quadrants()
    def erased(out):  # erasing writes 0 after normalisation: the mean colour in pixels
        return bool(np.all(np.isclose(out, TORCHVISION_MEAN * 255.0, atol=1e-3), axis=2).any())
    assert not any(erased(out) for out in _augmented(image, erasing=0.0))
    assert all(erased(out) for out in _augmented(image, erasing=1.0))
    assert 0 < sum(erased(out) for out in _augmented(image, erasing=0.5)) < len(SEEDS)


def test_channel_exchange_gives_rgb_single_channel_and_grey_and_only_when_on():
    image = _quadrants()
    sources = (image[32, 4], image[32, 27])  # the two halves' colours (a flip swaps them)

    def kind(out):
        pixel = out[32, 4]  # away from the crop borders, in one half or the other
        if any(np.allclose(pixel, colour, atol=0.01) for colour in sources):
            return "rgb"
        if np.allclose(pixel, pixel[0], atol=0.01):
            if any(np.isclose(pixel[0], colour[c], atol=0.01) for colour in sources for c in range(3)):
                return "single"
            return "grey"
        return "other"
    kinds = [kind(out) for out in _augmented(image, channel=True)]
    assert set(kinds) == {"rgb", "single", "grey"}, kinds
    assert {kind(out) for out in _augmented(image, channel=False)} == {"rgb"}
