"""The three maps of kdem_tf.activation_maps against NumPy computations from the last feature map and
the head's weights (GeM and average pooling, a BN-neck with non-trivial statistics)."""
from __future__ import annotations

import keras
import numpy as np
import pytest

from kdem_tf import activation_maps as maps
from kdem_tf.config import ModelConfig
from kdem_tf.model.model import build_kdem_models

NUM_CLASSES = 5


@pytest.fixture(scope="module", params=["gem", "avg"])
def network(request):
    """A tiny inference model (quarter width, one block per stage, 64x32) with a random BN-neck state
    and classifier, its FeatureNetwork, and a query and two gallery images."""
    keras.utils.set_random_seed(0)
    _, model = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=0.25, stage_blocks=(1, 1, 1, 1), gem=request.param == "gem"), NUM_CLASSES, (64, 32))
    rng = np.random.default_rng(1)
    bn_neck = model.get_layer("bn_neck")
    channels = int(bn_neck.moving_mean.shape[0])
    bn_neck.gamma.assign(rng.uniform(0.5, 1.5, channels).astype("float32"))
    bn_neck.moving_mean.assign(rng.uniform(0.0, 0.3, channels).astype("float32"))
    bn_neck.moving_variance.assign(rng.uniform(0.05, 0.5, channels).astype("float32"))
    kernel = rng.normal(scale=0.1, size=(channels, NUM_CLASSES))
    images = rng.normal(size=(3, 64, 32, 3)).astype("float32")
    feature_network = maps.FeatureNetwork.from_inference_model(model, kernel)
    return model, feature_network, images


def _maps(feature_network, images, modality=(1, 0, 0)):
    return np.asarray(feature_network.feature_maps(images, list(modality)), np.float64)


def _head_numpy(feature_network):
    """(pool(A) in NumPy, BN-neck scale s, mean mu) from the layers' own weights."""
    bn = feature_network.bn_neck
    scale = np.asarray(bn.gamma, np.float64) / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    mean = np.asarray(bn.moving_mean, np.float64)
    if hasattr(feature_network.pooling, "p"):
        q, eps = feature_network.pooling.p, feature_network.pooling.eps

        def pool(a):
            return np.mean(np.maximum(a, eps) ** q, axis=(0, 1)) ** (1.0 / q)
    else:
        def pool(a):
            return a.mean(axis=(0, 1))
    return pool, scale, mean


def test_the_split_network_gives_the_model_embedding(network):
    model, feature_network, images = network
    modality = np.array([1, 0, 0], np.int32)
    expected = np.asarray(model({"image": images, "modality": modality})["embedding"])
    got = np.asarray(feature_network.embed_from_maps(feature_network.feature_maps(images, modality)))
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_activation_map_is_the_normalised_channel_energy(network):
    _, feature_network, images = network
    feature_map = _maps(feature_network, images)[0]
    h, w, c = feature_map.shape
    energy = np.zeros((h, w))
    for k in range(c):
        energy += feature_map[:, :, k] ** 2
    expected = energy / np.sqrt((energy ** 2).sum())
    np.testing.assert_allclose(maps.activation_map(feature_map), expected, rtol=1e-10)


def test_class_activation_map_folds_the_bn_neck_and_averages_to_the_logit(network):
    _, feature_network, images = network
    feature_maps = _maps(feature_network, images)
    pool, scale, mean = _head_numpy(feature_network)
    logits = maps.class_logits(feature_network, feature_maps.astype("float32"))
    for index, feature_map in enumerate(feature_maps):
        pooled = pool(feature_map)
        np.testing.assert_allclose(logits[index], (scale * (pooled - mean)) @ feature_network.classifier_kernel,
                                   rtol=1e-4, atol=1e-5)
        for c in range(NUM_CLASSES):
            weights = feature_network.classifier_kernel[:, c] * scale  # w_k^c s_k
            if hasattr(feature_network.pooling, "p"):  # GeM: A^q / p^(q-1), mean over positions = p
                q, eps = feature_network.pooling.p, feature_network.pooling.eps
                spatial = np.maximum(feature_map, eps) ** q / pooled ** (q - 1)
            else:
                spatial = feature_map
            expected = np.einsum("hwk,k->hw", spatial - mean, weights)
            cam = maps.class_activation_map(feature_network, feature_map, c)
            np.testing.assert_allclose(cam, expected, rtol=1e-9, atol=1e-12)
            assert cam.mean() == pytest.approx(logits[index, c], rel=1e-3, abs=1e-4)


def _similarity_map_numpy(feature_network, feature_map, gallery):
    """Grad-CAM of cos(e_q, g) with the gradient worked out by hand: e = z / |z|, z = s (p - mu)."""
    pool, scale, mean = _head_numpy(feature_network)
    pooled = pool(feature_map)
    z = scale * (pooled - mean)
    e = z / np.linalg.norm(z)
    g = gallery / np.linalg.norm(gallery)
    similarity = e @ g
    d_pooled = scale * (g - similarity * e) / np.linalg.norm(z)
    h, w, _ = feature_map.shape
    if hasattr(feature_network.pooling, "p"):
        q, eps = feature_network.pooling.p, feature_network.pooling.eps
        clipped = np.maximum(feature_map, eps)
        d_pool_d_map = pooled ** (1 - q) * clipped ** (q - 1) * (feature_map > eps) / (h * w)
    else:
        d_pool_d_map = np.ones_like(feature_map) / (h * w)
    gradient = d_pooled * d_pool_d_map
    alpha = gradient.mean(axis=(0, 1))
    return similarity, gradient, np.maximum(np.einsum("hwk,k->hw", feature_map, alpha), 0.0)


def test_similarity_map_is_grad_cam_of_the_cosine(network):
    _, feature_network, images = network
    feature_maps = _maps(feature_network, images)
    gallery = np.asarray(feature_network.embed_from_maps(feature_maps[1:2].astype("float32")))[0]
    similarity, gradient = maps.similarity_gradient(feature_network, feature_maps[0], gallery)
    want_similarity, want_gradient, want_map = _similarity_map_numpy(feature_network, feature_maps[0], gallery)
    assert similarity == pytest.approx(want_similarity, abs=1e-5)
    np.testing.assert_allclose(gradient, want_gradient, rtol=2e-3, atol=1e-6 * np.abs(want_gradient).max())
    _, got_map = maps.similarity_map(feature_network, feature_maps[0], gallery)
    np.testing.assert_allclose(got_map, want_map, rtol=2e-3, atol=1e-3 * want_map.max())
    assert want_map.max() > 0


def test_similarity_map_changes_with_the_gallery_image(network):
    _, feature_network, images = network
    feature_maps = _maps(feature_network, images)
    embeddings = np.asarray(feature_network.embed_from_maps(feature_maps.astype("float32")))
    first_score, first = maps.similarity_map(feature_network, feature_maps[0], embeddings[1])
    second_score, second = maps.similarity_map(feature_network, feature_maps[0], embeddings[2])
    assert abs(first_score - second_score) > 1e-4
    assert np.abs(first - second).max() > 0.05 * max(first.max(), second.max())


def test_overlay_and_errors(network):
    _, feature_network, _ = network
    image = np.full((64, 32, 3), 100.0)
    heat = np.zeros((8, 4))
    heat[2, 1] = 1.0
    blended = maps.overlay(image, heat)
    assert blended.shape == (64, 32, 3) and blended.dtype == np.uint8
    assert not np.array_equal(blended[16, 8], blended[60, 30])  # hot and cold regions differ
    without_classifier = maps.FeatureNetwork.from_inference_model(network[0], None)
    with pytest.raises(maps.MapError, match="need the identity classifier"):
        maps.class_activation_map(without_classifier, np.ones((4, 2, 8)), 0)
    with pytest.raises(maps.MapError, match="outside the classifier's 5 classes"):
        maps.class_activation_map(feature_network, np.ones((4, 2, 8)), 7)
    with pytest.raises(maps.MapError, match="lacks layer"):
        maps.FeatureNetwork.from_inference_model(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
