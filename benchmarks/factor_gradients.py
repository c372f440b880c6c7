"""Which loss term moves the modality influence factors at initialisation, and which way?

    python -m benchmarks.factor_gradients --data TFRECORD_DIR [--image-size 64x32] [--seeds 3]
                                          [--backbone-weights none|torchvision|imagenet|FILE] [--full-model]

For a freshly built model and one P×K training batch per seed, prints the mean over pairs of
dL/dmi_v − dL/dmi_i for L_id, L_wrt and L_con (negative: the term pulls the pair's mix toward
the visible stem), the spread of the factors and each term's value. L_div is left out of
the mean: the gradient of a batch std sums to zero over the batch by construction; the mean
over pairs of |dL_div/dmi_v − dL_div/dmi_i| (the same per-pair push, as a size) is printed instead.
docs/training.md discusses what these figures show.

The model: ResNet-50 at full width and depth (16 bottlenecks; not the demo preset's half-width,
8-bottleneck Keras v1 network), without non-local blocks and with last stride 2; `--full-model`
adds AGW's non-local blocks and last stride 1. The backbone variant is the one the weights fit
(`backbone_for_weights`): torchvision's v1.5 for none, torchvision (AGW's weights) or a torchvision
file; Keras' v1 for imagenet (Keras' weights) or an .h5 file.
"""
from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from kdem_tf.image_contract import parse_size as parse_image_size

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="TFRecord folder with a train split")
    parser.add_argument("--image-size", type=parse_image_size, default=(64, 32))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--backbone-weights", default="none")
    parser.add_argument("--full-model", action="store_true", help="non-local blocks and last stride 1")
    args = parser.parse_args()

    import keras
    import tensorflow as tf

    from kdem_tf.data import input_pipeline as ip
    from kdem_tf.architecture import backbone_for_weights
    from kdem_tf.model.losses import total_loss
    from kdem_tf.config import ModelConfig
    from kdem_tf.model.model import build_kdem_models

    split = ip.load_split(args.data, "train")
    dataset, _ = ip.train_dataset(split, args.image_size, num_identities=8, num_instances=2, erasing=0.0)
    weights = None if args.backbone_weights == "none" else args.backbone_weights
    print("seed  mi_v mean  mi_v std  |  dL/dmi_v - dL/dmi_i: id  wrt  con  |  |dL_div push|  |  L_id  L_wrt  L_con")
    for seed, (inputs, labels) in zip(range(args.seeds), dataset):
        keras.utils.set_random_seed(seed)
        model_config = ModelConfig(non_local=args.full_model, last_stride=1 if args.full_model else 2,
                                   backbone_weights=weights or "none",
                                   backbone=backbone_for_weights(weights) or "torchvision")
        train_model, _ = build_kdem_models(model_config, ip.num_classes(split), args.image_size)
        with tf.GradientTape(persistent=True) as tape:
            outputs = train_model(inputs, training=True)
            losses = total_loss(outputs, labels["label_v"], labels["label_i"])
        factors = outputs["influence_factors"]

        def push(name):
            gradient = tape.gradient(losses[name], factors).numpy()
            return gradient[:, 0] - gradient[:, 1]

        div = np.abs(push("div_loss")).mean()
        mi_v = factors.numpy()[:, 0]
        print(f"{seed:4d}  {mi_v.mean():9.3f}  {mi_v.std():8.4f}  |  "
              + "  ".join(f"{push(k).mean():+.4f}" for k in ("id_loss", "wrt_loss", "con_loss"))
              + f"  |  {div:.4f}  |  " + "  ".join(f"{float(losses[k]):.3f}" for k in ("id_loss", "wrt_loss", "con_loss")))


if __name__ == "__main__":
    main()
