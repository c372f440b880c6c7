"""KDEMLayer, NonLocalBlock, GeMPooling and the ResNet-50 split."""
import keras
import numpy as np
import pytest

from kdem_tf.model import GeMPooling, KDEMLayer, NonLocalBlock
from kdem_tf.model.backbone_weights import load_backbone_weights
from kdem_tf.model.resnet import build_stem, build_trunk


@pytest.mark.parametrize(
    "layer",
    [
        KDEMLayer(fc_units=16, mlp_units=(8, 4), shared_fc=False, name="kdem"),
        NonLocalBlock(inner_channels="half", subsample=True, fused_batch_norm=False, name="non_local"),
        NonLocalBlock(inner_channels=3, name="non_local_3"),
        NonLocalBlock(reduction=4, name="non_local_saved_with_reduction"),
        GeMPooling(p=2.5, eps=1e-5, trainable_p=True, name="gem"),
    ],
    ids=lambda layer: layer.name,
)
def test_get_config_round_trips(layer):
    config = layer.get_config()
    assert type(layer).from_config(config).get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config


def test_kdem_layer_mixes_with_near_uniform_factors():
    keras.utils.set_random_seed(0)  # the layer's initial weights: the test was flaky unseeded
    rng = np.random.default_rng(0)
    f_v = rng.normal(size=(5, 8, 4, 6)).astype("float32")
    f_i = rng.normal(size=(5, 8, 4, 6)).astype("float32")
    kdem = KDEMLayer(fc_units=16, mlp_units=(8,))
    f_t, factors = kdem([f_v, f_i])
    factors = keras.ops.convert_to_numpy(factors)
    assert factors.shape == (5, 2)
    np.testing.assert_allclose(factors.sum(1), 1.0, rtol=1e-6)
    assert np.all(np.abs(factors - 0.5) < 0.05)  # near uniform at initialisation ...
    assert factors[:, 0].std() > 0  # ... but not exactly
    expected = factors[:, 0, None, None, None] * f_v + factors[:, 1, None, None, None] * f_i
    np.testing.assert_allclose(keras.ops.convert_to_numpy(f_t), expected, rtol=1e-5, atol=1e-6)


def test_kdem_layer_shared_fc_has_one_fc():
    shared = KDEMLayer(fc_units=16, mlp_units=(8,), shared_fc=True)
    separate = KDEMLayer(fc_units=16, mlp_units=(8,), shared_fc=False)
    inputs = [np.ones((2, 4, 4, 6), "float32")] * 2
    shared(inputs)
    separate(inputs)
    fc_size = 12 * 16 + 16
    assert separate.count_params() - shared.count_params() == fc_size


def numpy_max_pool_2x2_same(x):
    """2x2/2 max-pool with "same" padding: odd edges keep their last row/column."""
    batch, height, width, channels = x.shape
    padded = np.full((batch, height + height % 2, width + width % 2, channels), -np.inf, x.dtype)
    padded[:, :height, :width] = x
    return padded.reshape(batch, padded.shape[1] // 2, 2, padded.shape[2] // 2, 2, channels).max(axis=(2, 4))


def numpy_non_local(x, layer):
    """The dot-product non-local block in NumPy, from the layer's weights."""
    def conv1x1(tensor, conv):
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in conv.weights)
        return tensor @ kernel[0, 0] + bias
    batch, height, width, channels = x.shape
    theta = conv1x1(x, layer.theta).reshape(batch, height * width, -1)
    phi, g = conv1x1(x, layer.phi), conv1x1(x, layer.g)
    if layer.subsample:
        phi, g = numpy_max_pool_2x2_same(phi), numpy_max_pool_2x2_same(g)
    num_keys = phi.shape[1] * phi.shape[2]
    phi, g = phi.reshape(batch, num_keys, -1), g.reshape(batch, num_keys, -1)
    y = (theta @ phi.transpose(0, 2, 1) / num_keys) @ g
    w_y = conv1x1(y.reshape(batch, height, width, -1), layer.output_conv)
    gamma, beta, mean, variance = (keras.ops.convert_to_numpy(w) for w in layer.output_bn.weights)
    return (w_y - mean) / np.sqrt(variance + layer.output_bn.epsilon) * gamma + beta + x


# keys vs inner channels: 18 > 4 and 6 > 4 take theta (phi^T g), 6 < 8 takes (theta phi^T) g.
@pytest.mark.parametrize("inner_channels, subsample, expected_channels", [
    (1, False, 1), ("half", False, 4), ("half", True, 4), (8, True, 8)],
    ids=["agw-code-18keys-1ch", "half-18keys-4ch", "subsampled-6keys-4ch", "subsampled-6keys-8ch"])
def test_non_local_block_starts_as_identity_and_matches_numpy(inner_channels, subsample, expected_channels):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 6, 3, 8)).astype("float32")  # odd width: "same" pooling keeps the last column
    block = NonLocalBlock(inner_channels=inner_channels, subsample=subsample)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(block(x)), x, atol=1e-6)
    assert block.inter_channels == expected_channels
    block.output_bn.gamma.assign(rng.normal(size=8).astype("float32"))
    block.output_bn.beta.assign(rng.normal(size=8).astype("float32"))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(block(x, training=False)), numpy_non_local(x, block), rtol=1e-4, atol=1e-5
    )


def test_gem_pooling():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 2, size=(3, 5, 4, 7)).astype("float32")
    x[0, 0, 0, 0] = 0.0  # clamped to eps
    expected = (np.maximum(x, 1e-6) ** 3).mean(axis=(1, 2)) ** (1 / 3)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(GeMPooling()(x)), expected, rtol=1e-5)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(GeMPooling(p=1.0)(x)), x.mean(axis=(1, 2)), rtol=1e-5)
    trainable = GeMPooling(trainable_p=True)
    trainable(x)
    assert len(trainable.trainable_weights) == 1 and len(GeMPooling().weights) == 0


def test_stem_and_trunk_shapes_and_names():
    stem = build_stem("visible_stem", (64, 32, 3))
    assert stem.output.shape == (None, 16, 8, 64)
    trunk = build_trunk("trunk", (16, 8, 64), last_stride=1, non_local=True)
    assert trunk.output.shape == (None, 4, 2, 2048)
    non_local_names = [layer.name for layer in trunk.layers if isinstance(layer, NonLocalBlock)]
    assert non_local_names == [
        "conv3_block3_non_local",
        "conv3_block4_non_local",
        "conv4_block4_non_local",
        "conv4_block5_non_local",
        "conv4_block6_non_local",
    ]
    plain = build_trunk("plain", (16, 8, 64), last_stride=2, non_local=False)
    assert plain.output.shape == (None, 2, 1, 2048)
    assert not any(isinstance(layer, NonLocalBlock) for layer in plain.layers)


def test_load_backbone_weights_from_file_copies_by_name(tmp_path):
    reference = keras.applications.ResNet50(include_top=False, weights=None, input_shape=(64, 32, 3))
    path = str(tmp_path / "resnet50.weights.h5")
    reference.save_weights(path)
    stems = [build_stem(name, (64, 32, 3), backbone="keras") for name in ("visible_stem", "infrared_stem")]
    trunk = build_trunk("trunk", (16, 8, 64), non_local=True, backbone="keras")
    reference_layers = [layer for layer in reference.layers if layer.weights]
    # Same names and weight shapes as keras.applications.ResNet50 (non-local blocks aside).
    ours = [layer.name for layer in stems[0].layers + trunk.layers if layer.weights]
    assert [name for name in ours if "non_local" not in name] == [layer.name for layer in reference_layers]

    copied = load_backbone_weights(stems, trunk, path)
    assert copied == len(reference_layers) + 2  # conv1_conv and conv1_bn go to both stems
    for layer in reference_layers:
        targets = stems if layer.name.startswith("conv1_") else [trunk]
        for model in targets:
            for ours_weight, reference_weight in zip(model.get_layer(layer.name).get_weights(), layer.get_weights()):
                np.testing.assert_array_equal(ours_weight, reference_weight)
    assert load_backbone_weights(stems, trunk, None) == 0 and load_backbone_weights(stems, trunk, "none") == 0
    with pytest.raises(FileNotFoundError):
        load_backbone_weights(stems, trunk, str(tmp_path / "missing.weights.h5"))


def test_trunk_zero_init_residual_starts_blocks_as_their_shortcut():
    trunk = build_trunk("trunk", (16, 8, 64), non_local=False)
    gammas = [layer.gamma.numpy() for layer in trunk.layers if layer.name.endswith("_3_bn")]
    assert len(gammas) == 16 and all(np.all(gamma == 0) for gamma in gammas)
    assert np.all(trunk.get_layer("conv2_block1_0_bn").gamma.numpy() == 1)  # shortcut BN untouched
    plain = build_trunk("plain", (16, 8, 64), non_local=False, zero_init_residual=False)
    assert np.all(plain.get_layer("conv2_block1_3_bn").gamma.numpy() == 1)


@pytest.mark.parametrize("value", [0, -1, "third", 1.5, True, None])
def test_non_local_inner_channels_must_be_positive_or_half(value):
    with pytest.raises(ValueError, match="expected a positive integer or 'half'"):
        NonLocalBlock(inner_channels=value)


@pytest.mark.parametrize("shared_fc", [True, False])
def test_kdem_factors_match_eq5_recomputed_in_numpy(shared_fc):
    # alpha = softmax(MLP(sum_m FC_m([avg(F_m); max(F_m)]))), F_t = mi_v F_v + mi_i F_i (Eq. 5-6),
    # with weights large enough that the factors are far from 0.5.
    rng = np.random.default_rng(5)
    f_v = rng.normal(size=(4, 6, 3, 5)).astype("float32")
    f_i = rng.normal(loc=0.5, size=(4, 6, 3, 5)).astype("float32")
    kdem = KDEMLayer(fc_units=7, mlp_units=(6,), shared_fc=shared_fc)
    kdem.build([f_v.shape, f_i.shape])
    kdem.set_weights([rng.normal(scale=0.8, size=w.shape).astype("float32") for w in kdem.get_weights()])
    f_t, factors = (keras.ops.convert_to_numpy(t) for t in kdem([f_v, f_i]))

    def pooled(f):
        f = f.astype(np.float64)
        return np.concatenate([f.mean(axis=(1, 2)), f.max(axis=(1, 2))], axis=1)

    def dense(layer, x):
        kernel, bias = (w.astype(np.float64) for w in layer.get_weights())
        return x @ kernel + bias

    hidden = dense(kdem.fc_visible, pooled(f_v)) + dense(kdem.fc_infrared, pooled(f_i))
    for layer in kdem.mlp_layers:
        hidden = np.maximum(dense(layer, hidden), 0.0)
    logits = dense(kdem.factor_logits, hidden)
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(factors, expected, rtol=1e-4, atol=1e-6)
    assert np.abs(expected[:, 0] - 0.5).max() > 0.1  # the check is not about near-uniform factors
    mixed = expected[:, 0, None, None, None] * f_v + expected[:, 1, None, None, None] * f_i
    np.testing.assert_allclose(f_t, mixed, rtol=1e-4, atol=1e-5)
