"""Where the network looks: activation maps, class activation maps and similarity maps (the paper's Fig. 3).

Three maps over the last trunk feature map A [h, w, C] of one image (the output of conv5_x, before
the global pooling), each a [h, w] array that `overlay` resizes onto the image:

- `activation_map` (torchreid's `visualize_actmap`): sum over channels of A², L2-normalised over the
  h·w positions.
- `class_activation_map` (Zhou et al. 2016, the paper's [14]): Σ_k w_k^c A_k for class c, with the
  head between the pooled feature and the classifier folded in. The classifier here does not act on
  the pooled feature p but on the BN-neck's output s ⊙ (p − μ), s = γ / √(σ² + ε) (no shift: AGW
  freezes β at 0), so the channel weights are w_k^c s_k and each channel is centred by μ_k. With
  GeM pooling (p_k = (mean A_k^q)^(1/q), q = 3) the spatial term is A_k^q / p_k^(q−1), whose mean over
  the positions is p_k; so the map's mean over the positions is the class logit exactly, for average
  pooling (q = 1: plain A_k) and GeM alike. A test identity is not a training class: figures use the
  class the classifier ranks first for the image.
- `similarity_map` (Grad-CAM on a pair): the gradient G of the cosine similarity of the query's and
  the gallery image's embeddings with respect to the query's A; channel weights α_k = mean_hw G_k;
  map = ReLU(Σ_k α_k A_k). It depends on the gallery image through its embedding.

`FeatureNetwork` cuts a run's inference model (RUN_DIR/inference_model.keras) at A: stems → trunk
→ A → pooling → BN-neck → L2, the same layer objects, so `embed_from_maps` reproduces the model's
embedding. An exported SavedModel exposes only embeddings (its signatures take images and return
`embedding`), not A; `kdem_tf.visualize` therefore draws a SavedModel's maps from the run folder its
kdem_info.json names (`run_dir`) after checking that both give the same embeddings.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence, Tuple

import numpy as np

FIGURE_FILE = "activation_maps.png"  # what kdem_tf.visualize writes and kdem_tf.report shows
POOLING_LAYERS = ("gem_pooling", "avg_pooling")
OVERLAY_IMAGE_WEIGHT = 0.3  # torchreid: image * 0.3 + colour map * 0.7


class MapError(ValueError):
    """A model without the layers the maps need, or inputs of the wrong shape; the message names it."""


@dataclasses.dataclass
class FeatureNetwork:
    """The inference network split at the last trunk feature map A.

    Attributes:
        visible_stem, infrared_stem, trunk: the Keras sub-models of `build_kdem_models`.
        pooling: GeMPooling or GlobalAveragePooling2D.
        bn_neck: the BatchNormalization of the BN-neck, or None.
        classifier_kernel: [C, num_classes] identity classifier weights, or None (class maps need it).
    """
    visible_stem: object
    infrared_stem: object
    trunk: object
    pooling: object
    bn_neck: Optional[object] = None
    classifier_kernel: Optional[np.ndarray] = None

    @classmethod
    def from_inference_model(cls, model, classifier_kernel: Optional[np.ndarray] = None) -> "FeatureNetwork":
        """From the inference model of `build_kdem_models` (or RUN_DIR/inference_model.keras)."""
        names = {layer.name for layer in model.layers}
        missing = [name for name in ("visible_stem", "infrared_stem", "trunk") if name not in names]
        pooling = [name for name in POOLING_LAYERS if name in names]
        if missing or not pooling:
            raise MapError(f"model {model.name!r} lacks layer(s) {missing + ([] if pooling else ['gem_pooling'])}: "
                           f"not an inference model of kdem_tf.model.build_kdem_models")
        bn_neck = model.get_layer("bn_neck") if "bn_neck" in names else None
        return cls(model.get_layer("visible_stem"), model.get_layer("infrared_stem"), model.get_layer("trunk"),
                   model.get_layer(pooling[0]), bn_neck, classifier_kernel)

    def feature_maps(self, images, modality: Sequence[int]):
        """Normalised images [N, H, W, 3] and modality ids [N] (0 visible, 1 infrared) -> A [N, h, w, C]."""
        import tensorflow as tf

        images = tf.convert_to_tensor(images, tf.float32)
        modality = np.asarray(modality, np.int32).reshape(-1)
        if images.shape.rank != 4 or images.shape[0] != modality.size:
            raise MapError(f"expected images [N, H, W, 3] and N modality ids, got {images.shape} and {modality.size}")
        stems = tf.where(tf.reshape(tf.constant(modality == 1), (-1, 1, 1, 1)),
                         self.infrared_stem(images, training=False), self.visible_stem(images, training=False))
        return tf.cast(self.trunk(stems, training=False), tf.float32)

    def head_parameters(self) -> Tuple[float, np.ndarray, np.ndarray]:
        """(pooling exponent q (1 = average), BN-neck scale s [C], BN-neck mean μ [C]); s = 1, μ = 0 without one."""
        exponent = float(getattr(self.pooling, "p", 1.0))
        if getattr(self.pooling, "trainable_p", False):
            exponent = float(np.asarray(self.pooling.p_weight))
        channels = int(self.trunk.output.shape[-1])
        if self.bn_neck is None:
            return exponent, np.ones(channels), np.zeros(channels)
        gamma = np.asarray(self.bn_neck.gamma, np.float64) if self.bn_neck.scale else np.ones(channels)
        beta = np.asarray(self.bn_neck.beta, np.float64) if self.bn_neck.center else np.zeros(channels)
        if np.any(beta != 0):
            raise MapError("the BN-neck has a non-zero shift (beta): the class map folds a centre-only BN-neck")
        scale = gamma / np.sqrt(np.asarray(self.bn_neck.moving_variance, np.float64) + self.bn_neck.epsilon)
        return exponent, scale, np.asarray(self.bn_neck.moving_mean, np.float64)

    def embed_from_maps(self, maps):
        """A [N, h, w, C] -> the L2-normalised embedding [N, C] (pooling, BN-neck in inference mode)."""
        import tensorflow as tf

        features = self.pooling(maps)
        if self.bn_neck is not None:
            features = self.bn_neck(features, training=False)
        return tf.math.l2_normalize(tf.cast(features, tf.float32), axis=-1, epsilon=1e-12)


def activation_map(feature_map) -> np.ndarray:
    """torchreid's activation map of one A [h, w, C]: Σ_c A², L2-normalised over the positions -> [h, w]."""
    feature_map = np.asarray(feature_map, np.float64)
    energy = np.square(feature_map).sum(axis=-1)
    return energy / max(np.linalg.norm(energy), 1e-12)


def class_activation_map(network: FeatureNetwork, feature_map, class_index: int) -> np.ndarray:
    """Σ_k w_k^c s_k (A_k^q / p_k^(q−1) − μ_k) for one A [h, w, C] -> [h, w]; its mean is logit c."""
    if network.classifier_kernel is None:
        raise MapError("class activation maps need the identity classifier (a run folder's checkpoint)")
    kernel = np.asarray(network.classifier_kernel, np.float64)
    if not 0 <= class_index < kernel.shape[1]:
        raise MapError(f"class {class_index} outside the classifier's {kernel.shape[1]} classes")
    exponent, scale, mean = network.head_parameters()
    feature_map = np.asarray(feature_map, np.float64)
    clipped = np.maximum(feature_map, float(getattr(network.pooling, "eps", 0.0)))
    pooled = np.mean(clipped ** exponent, axis=(0, 1)) ** (1.0 / exponent)  # [C]
    spatial = clipped ** exponent / np.maximum(pooled, 1e-12) ** (exponent - 1.0)  # mean over h, w = pooled
    weights = kernel[:, class_index] * scale
    return (spatial - mean) @ weights


def class_logits(network: FeatureNetwork, maps) -> np.ndarray:
    """[N, num_classes] logits of the classifier on the BN-neck output of A [N, h, w, C]."""
    if network.classifier_kernel is None:
        raise MapError("class logits need the identity classifier (a run folder's checkpoint)")
    features = network.pooling(maps)
    if network.bn_neck is not None:
        features = network.bn_neck(features, training=False)
    return np.asarray(features, np.float64) @ np.asarray(network.classifier_kernel, np.float64)


def similarity_gradient(network: FeatureNetwork, query_map, gallery_embedding) -> Tuple[float, np.ndarray]:
    """(cosine similarity, its gradient with respect to the query's A [h, w, C])."""
    import tensorflow as tf

    query_map = tf.convert_to_tensor(np.asarray(query_map, np.float32)[None])
    gallery = tf.math.l2_normalize(tf.reshape(tf.convert_to_tensor(gallery_embedding, tf.float32), (1, -1)), axis=-1)
    with tf.GradientTape() as tape:
        tape.watch(query_map)
        similarity = tf.reduce_sum(network.embed_from_maps(query_map) * gallery)
    return float(similarity), np.asarray(tape.gradient(similarity, query_map))[0]


def grad_cam(feature_map, gradient) -> np.ndarray:
    """Grad-CAM of one A [h, w, C] and its gradient: ReLU(Σ_k mean_hw(G_k) A_k) -> [h, w]."""
    weights = np.asarray(gradient, np.float64).mean(axis=(0, 1))
    return np.maximum(np.asarray(feature_map, np.float64) @ weights, 0.0)


def similarity_map(network: FeatureNetwork, query_map, gallery_embedding) -> Tuple[float, np.ndarray]:
    """(cosine similarity, Grad-CAM of it on the query's A) for one query A and one gallery embedding."""
    similarity, gradient = similarity_gradient(network, query_map, gallery_embedding)
    return similarity, grad_cam(query_map, gradient)


def overlay(image: np.ndarray, heat: np.ndarray, image_weight: float = OVERLAY_IMAGE_WEIGHT) -> np.ndarray:
    """An RGB uint8 image [H, W, 3] (0..255) with the [h, w] map resized (bilinear), min-max scaled to
    0..1, coloured with the jet colour map and blended as torchreid does."""
    from matplotlib import colormaps
    from PIL import Image

    image = np.asarray(image, np.float64)
    height, width = image.shape[:2]
    heat = np.asarray(heat, np.float32)
    resized = np.asarray(Image.fromarray(heat, mode="F").resize((width, height), Image.BILINEAR), np.float64)
    span = resized.max() - resized.min()
    scaled = (resized - resized.min()) / span if span > 0 else np.zeros_like(resized)
    coloured = colormaps["jet"](scaled)[..., :3] * 255.0
    return np.clip(image * image_weight + coloured * (1.0 - image_weight), 0, 255).astype(np.uint8)
