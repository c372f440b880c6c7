"""build_kdem_models: shapes, weight sharing, save/reload, gradients (tiny 64x32 images)."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kdem_tf.config import ModelConfig
from kdem_tf.model import build_kdem_models, total_loss

IMAGE_SIZE = (64, 32)
NUM_CLASSES = 4
BATCH = 2  # pairs


@pytest.fixture(scope="module")
def kdem_models():
    keras.utils.set_random_seed(0)
    return build_kdem_models(ModelConfig(backbone_weights="none"), NUM_CLASSES, IMAGE_SIZE)


@pytest.fixture(scope="module")
def baseline_models():
    return build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, gem=False), NUM_CLASSES, IMAGE_SIZE, kdem=False)


def pair_batch(seed=0):
    rng = np.random.default_rng(seed)
    shape = (BATCH,) + IMAGE_SIZE + (3,)
    return {
        "visible": rng.normal(size=shape).astype("float32"),
        "infrared": rng.normal(size=shape).astype("float32"),
    }


def query_batch(seed=1):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(3,) + IMAGE_SIZE + (3,)).astype("float32"),
        "modality": np.array([0, 1, 0], "int32"),
    }


def test_train_outputs_with_kdem(kdem_models):
    train_model, _ = kdem_models
    outputs = train_model(pair_batch(), training=True)
    assert set(outputs) == {
        "pooled_v", "pooled_i", "pooled_t", "logits_v", "logits_i", "logits_t", "influence_factors"
    }
    for stream in "vit":
        assert outputs[f"pooled_{stream}"].shape == (BATCH, 2048)
        assert outputs[f"logits_{stream}"].shape == (BATCH, NUM_CLASSES)
    np.testing.assert_allclose(outputs["influence_factors"].numpy().sum(1), 1.0, rtol=1e-6)


def test_train_outputs_without_kdem(baseline_models):
    train_model, inference_model = baseline_models
    outputs = train_model(pair_batch(), training=True)
    assert set(outputs) == {"pooled_v", "pooled_i", "logits_v", "logits_i"}
    assert outputs["pooled_v"].shape == (BATCH, 2048) and outputs["logits_i"].shape == (BATCH, NUM_CLASSES)
    assert inference_model(query_batch())["embedding"].shape == (3, 2048)


def test_inference_embedding_is_normalised_and_picks_the_modality_stem(kdem_models):
    _, inference_model = kdem_models
    queries = query_batch()
    embedding = inference_model(queries, training=False)["embedding"].numpy()
    assert embedding.shape == (3, 2048)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-5)
    # One image per modality alone gives the same as inside the mixed batch (inference BN) ...
    for modality in (0, 1):
        alone = inference_model(
            {"image": queries["image"][:1], "modality": np.array([modality], "int32")}, training=False
        )["embedding"].numpy()
        if modality == 0:
            np.testing.assert_allclose(alone[0], embedding[0], atol=1e-5)
        else:
            infrared_of_first = alone[0]
    # ... and the two stems (initialised independently) give different embeddings.
    assert np.abs(infrared_of_first - embedding[0]).max() > 1e-4


def test_inference_model_shares_weights_with_train_model(kdem_models):
    train_model, inference_model = kdem_models
    for name in ("visible_stem", "infrared_stem", "trunk", "bn_neck"):
        assert inference_model.get_layer(name) is train_model.get_layer(name)
    # A shortcut conv: the residual branches start at zero (zero_init_residual) and a change
    # of their convs would not show in the output.
    kernel = train_model.get_layer("trunk").get_layer("conv5_block1_0_conv").kernel
    queries = query_batch()
    before = inference_model(queries, training=False)["embedding"].numpy()
    original = kernel.numpy()
    try:
        kernel.assign(original * 2.0 + 0.01)
        inference_kernel = inference_model.get_layer("trunk").get_layer("conv5_block1_0_conv").kernel
        np.testing.assert_array_equal(inference_kernel.numpy(), kernel.numpy())
        after = inference_model(queries, training=False)["embedding"].numpy()
        assert np.abs(after - before).max() > 1e-4
    finally:
        kernel.assign(original)


def test_inference_model_save_reload_and_tf_function(kdem_models, tmp_path):
    _, inference_model = kdem_models
    queries = query_batch()
    expected = inference_model(queries, training=False)["embedding"].numpy()
    path = str(tmp_path / "inference.keras")
    inference_model.save(path)
    reloaded = keras.saving.load_model(path)  # no custom_objects: the layers are registered
    np.testing.assert_allclose(reloaded(queries, training=False)["embedding"].numpy(), expected, atol=1e-5)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None,) + IMAGE_SIZE + (3,), tf.float32),
            tf.TensorSpec((None,), tf.int32),
        ]
    )
    def serve(image, modality):
        return inference_model({"image": image, "modality": modality}, training=False)

    np.testing.assert_allclose(
        serve(tf.constant(queries["image"]), tf.constant(queries["modality"]))["embedding"].numpy(), expected, atol=1e-5
    )


def test_gradients_reach_both_stems_kdem_and_trunk(kdem_models):
    train_model, _ = kdem_models
    labels = tf.constant([0, 1])
    with tf.GradientTape() as tape:
        outputs = train_model(pair_batch(2), training=True)
        loss = total_loss(outputs, labels, labels)["total"]
    watched = {
        "visible_stem": train_model.get_layer("visible_stem").get_layer("conv1_conv").kernel,
        "infrared_stem": train_model.get_layer("infrared_stem").get_layer("conv1_conv").kernel,
        "kdem_fc": train_model.get_layer("kdem").fc_visible.kernel,
        "kdem_factor_logits": train_model.get_layer("kdem").factor_logits.kernel,
        # The shortcut conv and the residual branch's last BN gamma: with random init the
        # residual branches start at zero (zero_init_residual), so the convs inside them
        # receive gradient only from the second step on.
        "trunk": train_model.get_layer("trunk").get_layer("conv3_block1_0_conv").kernel,
        "trunk_residual_gamma": train_model.get_layer("trunk").get_layer("conv3_block1_3_bn").gamma,
        "classifier": train_model.get_layer("classifier").kernel,
    }
    gradients = tape.gradient(loss, list(watched.values()))
    for name, gradient in zip(watched, gradients):
        assert gradient is not None, name
        values = tf.convert_to_tensor(gradient).numpy()
        assert np.all(np.isfinite(values)), name
        assert np.abs(values).max() > 0, name


def test_inference_model_exports_with_tf_saved_model(kdem_models, tmp_path):
    _, inference_model = kdem_models

    class Serving(tf.Module):
        def __init__(self, model):
            super().__init__()
            self.model = model

        @tf.function(
            input_signature=[
                tf.TensorSpec((None,) + IMAGE_SIZE + (3,), tf.float32),
                tf.TensorSpec((None,), tf.int32),
            ]
        )
        def serve(self, image, modality):
            return self.model({"image": image, "modality": modality}, training=False)

    queries = query_batch()
    expected = inference_model(queries, training=False)["embedding"].numpy()
    module = Serving(inference_model)
    export_dir = str(tmp_path / "export")
    tf.saved_model.save(module, export_dir, signatures={"serving_default": module.serve})
    serve = tf.saved_model.load(export_dir).signatures["serving_default"]
    exported = serve(image=tf.constant(queries["image"]), modality=tf.constant(queries["modality"]))
    np.testing.assert_allclose(exported["embedding"].numpy(), expected, atol=1e-5)


def test_mixed_precision_outputs_are_float32():
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        train_model, inference_model = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False), NUM_CLASSES, IMAGE_SIZE)
        outputs = train_model(pair_batch(), training=True)
        embedding = inference_model(query_batch(), training=False)["embedding"]
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert train_model.get_layer("trunk").compute_dtype == "bfloat16"
    for name, value in outputs.items():
        assert value.dtype == tf.float32, name
        assert np.all(np.isfinite(value.numpy())), name
    assert embedding.dtype == tf.float32


def test_each_modality_embedding_is_its_own_stem_through_trunk_pool_and_bn_neck(kdem_models):
    # Independent of SelectByModality: the layers called one after the other, per modality.
    _, inference_model = kdem_models
    queries = query_batch(seed=7)
    embedding = inference_model(queries, training=False)["embedding"].numpy()
    layer = inference_model.get_layer
    expected = {}
    for modality, stem in ((0, "visible_stem"), (1, "infrared_stem")):
        features = layer(stem)(queries["image"], training=False)
        pooled = layer("gem_pooling")(layer("trunk")(features, training=False))
        normalised = layer("bn_neck")(pooled, training=False).numpy().astype(np.float64)
        expected[modality] = normalised / np.linalg.norm(normalised, axis=1, keepdims=True)
    for row, modality in enumerate(queries["modality"]):
        np.testing.assert_allclose(embedding[row], expected[modality][row], rtol=1e-4, atol=1e-5)
        # The other stem would be caught: it gives another embedding of the same image.
        assert np.abs(embedding[row] - expected[1 - modality][row]).max() > 1e-3


def test_width_scales_every_stem_and_trunk_channel_and_the_embedding():
    keras.utils.set_random_seed(0)
    full_train, _ = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False), NUM_CLASSES, IMAGE_SIZE)
    half_train, half_inference = build_kdem_models(ModelConfig(backbone_weights="none", non_local=False, width=0.5), NUM_CLASSES, IMAGE_SIZE)
    assert half_inference(query_batch())["embedding"].shape == (3, 1024)
    assert half_train(pair_batch())["pooled_t"].shape == (BATCH, 1024)
    for stem in ("visible_stem", "infrared_stem"):
        assert half_train.get_layer(stem).output.shape[-1] == 32
    full_convs = {l.name: l.filters for l in full_train.get_layer("trunk").layers if hasattr(l, "filters")}
    half_convs = {l.name: l.filters for l in half_train.get_layer("trunk").layers if hasattr(l, "filters")}
    assert full_convs.keys() == half_convs.keys() and len(full_convs) == 52  # 16 bottlenecks x 3 + 4 shortcuts
    assert all(half_convs[name] * 2 == filters for name, filters in full_convs.items())
    # About a quarter of the weights (convs scale with in x out channels).
    ratio = half_train.count_params() / full_train.count_params()
    assert 0.2 < ratio < 0.3, ratio
    with pytest.raises(ValueError, match=r"ImageNet weights fit ResNet-50 \(width 1"):
        build_kdem_models(ModelConfig(width=0.5, backbone_weights="torchvision"), NUM_CLASSES, IMAGE_SIZE)


def test_stage_blocks_build_a_shallower_trunk_with_resnet50s_stages_and_names():
    """model.stage_blocks=1,1,1,1 (the tiny preset): one bottleneck per stage, the same strides, output
    shape and layer names as ResNet-50's first blocks; each stage's non-local blocks are capped at its
    block count; weights are refused."""
    keras.utils.set_random_seed(0)
    train_model, inference_model = build_kdem_models(ModelConfig(backbone_weights="none", stage_blocks=(1, 1, 1, 1)), NUM_CLASSES, IMAGE_SIZE)
    trunk = train_model.get_layer("trunk")
    blocks = sorted({l.name.split("_")[0] + "_" + l.name.split("_")[1] for l in trunk.layers if "_block" in l.name})
    assert blocks == ["conv2_block1", "conv3_block1", "conv4_block1", "conv5_block1"]
    assert [l.name for l in trunk.layers if l.name.endswith("_non_local")] == [
        "conv3_block1_non_local", "conv4_block1_non_local"]
    full_trunk = build_kdem_models(ModelConfig(backbone_weights="none"), NUM_CLASSES, IMAGE_SIZE)[0].get_layer("trunk")
    assert trunk.output.shape == full_trunk.output.shape  # same strides: same feature map
    convs = {l.name for l in trunk.layers if not l.name.endswith("_non_local")}
    assert convs < {l.name for l in full_trunk.layers}  # ResNet-50's names, its later blocks left out
    assert inference_model(query_batch())["embedding"].shape == (3, 2048)
    with pytest.raises(ValueError, match=r"stage_blocks=\(1, 1, 1, 1\): ImageNet weights fit ResNet-50"):
        build_kdem_models(ModelConfig(stage_blocks=(1, 1, 1, 1), backbone_weights="torchvision"), NUM_CLASSES, IMAGE_SIZE)
    with pytest.raises(ValueError, match="4 positive block counts"):
        build_kdem_models(ModelConfig(backbone_weights="none", stage_blocks=(1, 1, 1)), NUM_CLASSES, IMAGE_SIZE)
