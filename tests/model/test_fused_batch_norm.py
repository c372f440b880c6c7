"""FusedBatchNormalization against Keras 3's BatchNormalization on seeded inputs."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdem_tf.model.fused_batch_norm import FusedBatchNormalization

SHAPE = (4, 6, 5, 8)  # N = 4*6*5 = 120 values per channel


def _pair(policy="float32", **kwargs):
    """A Keras BN and a fused BN with the same random gamma / beta / moving statistics."""
    rng = np.random.default_rng(0)
    layers = (keras.layers.BatchNormalization(dtype=policy, **kwargs), FusedBatchNormalization(dtype=policy, **kwargs))
    for layer in layers:
        layer.build(SHAPE)
    values = [  # moving variance > 0
        rng.uniform(0.5, 2.0, size=w.shape) if "variance" in w.path else rng.normal(size=w.shape)
        for w in layers[0].weights
    ]
    for layer in layers:
        layer.set_weights([v.astype("float32") for v in values])
    return layers


def _inputs(seed=1):
    return tf.constant(np.random.default_rng(seed).normal(2.0, 3.0, size=SHAPE).astype("float32"))


def test_training_matches_keras_outputs_gradients_and_moving_statistics():
    keras_bn, fused_bn = _pair(momentum=0.9, epsilon=1e-5)
    x = _inputs()
    upstream = tf.constant(np.random.default_rng(2).normal(size=SHAPE).astype("float32"))
    results = []
    for layer in (keras_bn, fused_bn):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * upstream)
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y.numpy()] + [g.numpy() for g in grads])
    for expected, actual in zip(*results):
        np.testing.assert_allclose(actual, expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(fused_bn.moving_mean.numpy(), keras_bn.moving_mean.numpy(), rtol=1e-6, atol=1e-6)
    # The documented difference: the fused op feeds the unbiased batch variance into
    # the moving average (PyTorch/cuDNN), Keras the biased one.
    n = SHAPE[0] * SHAPE[1] * SHAPE[2]
    batch_var = x.numpy().reshape(-1, SHAPE[-1]).var(axis=0)
    initial = _pair(momentum=0.9, epsilon=1e-5)[0].moving_variance.numpy()
    np.testing.assert_allclose(keras_bn.moving_variance.numpy(), 0.9 * initial + 0.1 * batch_var, rtol=1e-5)
    np.testing.assert_allclose(
        fused_bn.moving_variance.numpy(), 0.9 * initial + 0.1 * batch_var * n / (n - 1), rtol=1e-5
    )


def test_inference_matches_keras_and_numpy():
    keras_bn, fused_bn = _pair(momentum=0.9, epsilon=1e-5)
    x = _inputs()
    gamma, beta, mean, variance = fused_bn.get_weights()
    expected = (x.numpy() - mean) / np.sqrt(variance + 1e-5) * gamma + beta  # no floor: test_fused_batch_norm_epsilon
    np.testing.assert_allclose(fused_bn(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(fused_bn(x).numpy(), keras_bn(x).numpy(), rtol=1e-4, atol=1e-4)


def test_bfloat16_keeps_dtype_and_float32_statistics():
    keras_bn, fused_bn = _pair("mixed_bfloat16", momentum=0.9, epsilon=1e-5)
    x = _inputs()
    y = fused_bn(x, training=True)
    assert y.dtype == tf.bfloat16 and fused_bn.moving_mean.dtype == "float32"
    reference = keras_bn(x, training=True)
    np.testing.assert_allclose(tf.cast(y, tf.float32).numpy(), tf.cast(reference, tf.float32).numpy(), atol=0.05)


@pytest.mark.parametrize("center", [True, False])
def test_falls_back_to_keras_for_2d_inputs_and_handles_center_false(center):
    keras_bn, fused_bn = _pair(momentum=0.9, center=center)
    x = _inputs()
    np.testing.assert_allclose(fused_bn(x, training=True).numpy(), keras_bn(x, training=True).numpy(), atol=1e-4)
    flat = tf.reshape(x, (-1, SHAPE[-1]))  # 2-D (as the BN-neck): Keras' own code path
    keras_flat, fused_flat = keras.layers.BatchNormalization(center=center), FusedBatchNormalization(center=center)
    np.testing.assert_allclose(fused_flat(flat, training=True).numpy(), keras_flat(flat, training=True).numpy(),
                               atol=1e-5)
    np.testing.assert_allclose(fused_flat.moving_variance.numpy(), keras_flat.moving_variance.numpy(), rtol=1e-6)


def test_serialises_and_reloads_with_its_weights(tmp_path):
    inputs = keras.Input((6, 5, 8))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.8, name="bn")(inputs))
    model.get_layer("bn").set_weights(_pair()[1].get_weights())
    path = str(tmp_path / "bn.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    layer = restored.get_layer("bn")
    assert type(layer) is FusedBatchNormalization and layer.momentum == pytest.approx(0.8)
    x = _inputs()
    np.testing.assert_allclose(restored(x).numpy(), model(x).numpy(), atol=1e-6)
