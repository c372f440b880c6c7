"""`python -m kdem_tf.visualize`: activation, class activation and similarity maps (the paper's Fig. 3).

    python -m kdem_tf.visualize --model RUN_DIR|SAVEDMODEL --dataset sysu --data-root data/SYSU-MM01 \
        --out reports/maps [--queries 4] [--top-k 3]

For the first `--queries` infrared query identities of the protocol's first trial, the figure
`OUT/activation_maps.png` shows per row: the query, its activation map, its class activation map
(the training class the classifier ranks first: test identities are not training classes), then
for each of the `--top-k` visible gallery images ranked first by cosine similarity: the gallery
image's activation map (its frame green when it is the same person, red otherwise) and the
similarity map of the pair on the query. The maps and their definitions: `kdem_tf.activation_maps`.

`--model` is a training run folder (RUN_DIR/inference_model.keras; the classifier comes from its
latest checkpoint), or an exported SavedModel version folder: a SavedModel exposes embeddings only,
not the last feature map, so its maps are drawn from the run folder its kdem_info.json names
(`run_dir`), after checking that the two give the same embeddings for the queries.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from typing import List, Optional, Sequence

import numpy as np

from kdem_tf import activation_maps as maps
from kdem_tf import datasets

EMBEDDING_TOLERANCE = 1e-3  # max |Δ| between a SavedModel's and its run folder's unit embeddings


class VisualizeError(ValueError):
    """Bad --model, dataset or image; the message names it."""


def restore_run_models(run_dir: str, saved_model) -> tuple:
    """(inference model, classifier kernel [C, num_classes]) of the run's latest checkpoint, computing in
    float32: the train and inference models are rebuilt from config.yaml under the float32 policy (a run
    trained under mixed precision saved bfloat16 layers in inference_model.keras; the export computes in
    float32, and so do the maps) and the checkpoint read into them. Every weight must equal
    `saved_model`'s (RUN_DIR/inference_model.keras, written at the same step)."""
    import keras
    import tensorflow as tf

    from kdem_tf import config as config_lib
    from kdem_tf.architecture import ABLATION_ROWS
    from kdem_tf.training.models import build_models
    from kdem_tf.training.checkpointing import latest_checkpoint

    checkpoint = latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    if checkpoint is None:
        raise VisualizeError(f"{run_dir}/checkpoints: no checkpoint, so no classifier for class activation maps")
    with open(os.path.join(run_dir, "config.yaml")) as f:
        config = config_lib.from_yaml_text(f.read())
    with open(os.path.join(run_dir, "run_info.json")) as f:
        num_classes = int(json.load(f)["num_classes"])
    keras.mixed_precision.set_global_policy("float32")
    train_model, inference_model = build_models(config, num_classes, ABLATION_ROWS[config.loss.ablation],
                                                tf.distribute.get_strategy())
    tf.train.Checkpoint(model=train_model).read(checkpoint["prefix"]).expect_partial()
    restored, saved = inference_model.get_weights(), saved_model.get_weights()
    differences = [float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max())
                   for a, b in zip(restored, saved) if np.shape(a) == np.shape(b)]
    if len(restored) != len(saved) or len(differences) != len(saved) or max(differences, default=0.0) > 0.0:
        raise VisualizeError(f"{checkpoint['prefix']}: its weights differ from {run_dir}/inference_model.keras "
                             f"(max |Δ| {max(differences, default=float('nan')):.2e}, {len(restored)} vs "
                             f"{len(saved)} arrays): not the same training step")
    return inference_model, np.asarray(train_model.get_layer("classifier").kernel, np.float64)


def resolve_run_dir(model_path: str) -> tuple:
    """(run folder, SavedModel folder or None) of --model."""
    if os.path.exists(os.path.join(model_path, "inference_model.keras")):
        return model_path, None
    info_path = os.path.join(model_path, "assets.extra", "kdem_info.json")
    if not os.path.exists(os.path.join(model_path, "saved_model.pb")):
        raise VisualizeError(f"{model_path}: neither a run folder (inference_model.keras) nor a SavedModel")
    run_dir = None
    if os.path.exists(info_path):
        with open(info_path) as f:
            try:
                run_dir = json.load(f).get("run_dir")
            except json.JSONDecodeError as error:
                raise VisualizeError(f"{info_path}: not JSON ({error})") from None
    if not run_dir or not os.path.exists(os.path.join(run_dir, "inference_model.keras")):
        raise VisualizeError(f"{model_path}: a SavedModel exposes embeddings only, not the last feature map the maps "
                             f"need, and its {info_path} names no run folder that exists ({run_dir!r}): pass the "
                             f"run folder as --model")
    return run_dir, model_path


def _trial(args):
    """The protocol's first trial with infrared queries and a visible gallery."""
    from kdem_tf.evaluation import EvalOptions

    dataset = datasets.get(args.dataset)
    options = EvalOptions(trials=1, direction="i2v" if dataset.default_direction else None)
    return dataset.trials_from_folder(args.data_root, dataset.check_options(options))[0]


def _load_images(contract, data_root: str, paths: Sequence[str]) -> np.ndarray:
    """[N, H, W, 3] float32 RGB 0..255 at the contract's size (its decode and resize)."""
    import tensorflow as tf

    images = []
    for path in paths:
        full = os.path.join(data_root, path)
        try:
            with open(full, "rb") as f:
                images.append(np.asarray(contract.decode(tf.constant(f.read()))))
        except (OSError, tf.errors.InvalidArgumentError) as error:
            raise VisualizeError(f"{full}: unreadable image ({error})") from None
    return np.stack(images).astype(np.float32)


class _Embedder:
    """Feature maps and embeddings of image files, in batches."""

    def __init__(self, network: maps.FeatureNetwork, contract, data_root: str, batch_size: int = 32):
        self.network, self.contract, self.data_root, self.batch_size = network, contract, data_root, batch_size

    def __call__(self, paths: Sequence[str], modality: int):
        """(images 0..255 [N, H, W, 3], A [N, h, w, C], unit embeddings [N, C])."""
        images, feature_maps, embeddings = [], [], []
        for start in range(0, len(paths), self.batch_size):
            batch = _load_images(self.contract, self.data_root, paths[start:start + self.batch_size])
            fmap = self.network.feature_maps(self.contract.normalize(batch), [modality] * len(batch))
            images.append(batch)
            feature_maps.append(np.asarray(fmap))
            embeddings.append(np.asarray(self.network.embed_from_maps(fmap)))
        return np.concatenate(images), np.concatenate(feature_maps), np.concatenate(embeddings)


def pick_queries(trial, count: int) -> List[int]:
    """Indices of the first query image of each of the first `count` query identities."""
    first = {}
    for index, pid in enumerate(trial.query.pids):
        first.setdefault(int(pid), index)
    return list(first.values())[:count]


def draw_figure(rows: List[dict], path: str, title: str) -> str:
    """Writes the grid (one row per query: image, activation map, class map, then per match its
    activation map and the pair's similarity map on the query) to `path`, atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    columns = 3 + 2 * max(len(row["matches"]) for row in rows)
    fig = Figure(figsize=(1.25 * columns, 2.6 * len(rows) + 0.5), dpi=110)
    FigureCanvasAgg(fig)
    for r, row in enumerate(rows):
        panels = [(row["image"], f"query id {row['pid']}", None),
                  (row["activation"], "activation", None),
                  (row["cam"], f"CAM class {row['class']}", None)]
        for match in row["matches"]:
            colour = "green" if match["same"] else "red"
            panels.append((match["activation"], f"#{match['rank']} id {match['pid']}", colour))
            panels.append((match["similarity_map"], f"sim {match['score']:.2f}", None))
        for c, (picture, label, colour) in enumerate(panels):
            ax = fig.add_subplot(len(rows), columns, r * columns + c + 1)
            ax.imshow(picture)
            ax.set_title(label, fontsize=7, color=colour or "black")
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(colour or "none")
                spine.set_linewidth(3 if colour else 0)
    from kdem_tf.evaluation.plots import save_figure

    return save_figure(fig, path, title, 9)


def build_rows(network: maps.FeatureNetwork, embedder: _Embedder, trial, queries: int, top_k: int) -> List[dict]:
    """The figure's rows: each picked infrared query with its maps and its top-k visible matches."""
    from kdem_tf.image_contract import MODALITY_INDEX, INFRARED, VISIBLE

    picks = pick_queries(trial, queries)
    q_images, q_maps, q_embeddings = embedder([trial.query.paths[i] for i in picks], MODALITY_INDEX[INFRARED])
    g_images, g_maps, g_embeddings = embedder(list(trial.gallery.paths), MODALITY_INDEX[VISIBLE])
    logits = maps.class_logits(network, q_maps) if network.classifier_kernel is not None else None
    rows = []
    for row, index in enumerate(picks):
        order = np.argsort(-(g_embeddings @ q_embeddings[row]))[:top_k]
        predicted = int(np.argmax(logits[row])) if logits is not None else None
        cam = maps.class_activation_map(network, q_maps[row], predicted) if predicted is not None \
            else np.zeros(q_maps.shape[1:3])
        matches = []
        for rank, j in enumerate(order, start=1):
            score, sim_map = maps.similarity_map(network, q_maps[row], g_embeddings[j])
            matches.append({"rank": rank, "pid": int(trial.gallery.pids[j]), "score": score,
                            "same": bool(trial.gallery.pids[j] == trial.query.pids[index]),
                            "activation": maps.overlay(g_images[j], maps.activation_map(g_maps[j])),
                            "similarity_map": maps.overlay(q_images[row], sim_map)})
        rows.append({"pid": int(trial.query.pids[index]), "class": predicted,
                     "image": q_images[row].astype(np.uint8),
                     "activation": maps.overlay(q_images[row], maps.activation_map(q_maps[row])),
                     "cam": maps.overlay(q_images[row], cam), "matches": matches,
                     "query_path": trial.query.paths[index], "embedding": q_embeddings[row]})
    return rows


def load_network(run_dir: str):
    """(FeatureNetwork, image contract) of a run folder: the float32 models of its latest checkpoint
    (`restore_run_models`); a folder without checkpoints gives inference_model.keras as saved and no
    classifier (no class activation maps)."""
    import keras

    import kdem_tf.model.model  # noqa: F401  (registers the custom layers)
    from kdem_tf.image_contract import ImageContract

    model = keras.saving.load_model(os.path.join(run_dir, "inference_model.keras"), compile=False)
    kernel = None
    if os.path.exists(os.path.join(run_dir, "checkpoints", "latest.json")):
        model, kernel = restore_run_models(run_dir, model)
    return maps.FeatureNetwork.from_inference_model(model, kernel), ImageContract.load(run_dir)


def check_saved_model(saved_model: str, data_root: str, rows: List[dict]) -> float:
    """Max |Δ| between the SavedModel's embeddings of the queries and the run folder's; refuses a mismatch."""
    from kdem_tf.evaluation.embedding import embed_images

    exported = embed_images(saved_model, data_root, [(row["query_path"], "infrared") for row in rows])
    difference = float(np.abs(exported - np.stack([row["embedding"] for row in rows])).max())
    if difference > EMBEDDING_TOLERANCE:
        raise VisualizeError(f"{saved_model}: its embeddings differ from its run folder's by {difference:.2e} "
                             f"(> {EMBEDDING_TOLERANCE}): the maps would not be this model's")
    return difference


def run(args: argparse.Namespace) -> str:
    run_dir, saved_model = resolve_run_dir(args.model)
    network, contract = load_network(run_dir)
    trial = _trial(args)
    rows = build_rows(network, _Embedder(network, contract, args.data_root), trial, args.queries, args.top_k)
    note = ""
    if saved_model:
        difference = check_saved_model(saved_model, args.data_root, rows)
        note = f", SavedModel {saved_model} (max |Δ embedding| {difference:.1e})"
    path = draw_figure(rows, os.path.join(args.out, maps.FIGURE_FILE),
                       f"infrared queries, their activation and class maps; top-{args.top_k} visible matches "
                       f"(green = same id) and the pair's similarity map on the query\n{run_dir}{note}")
    print(f"maps: {path}")
    return path


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from kdem_tf import cli_help

    parser = cli_help.parser("kdem_tf.visualize", __doc__.split("\n")[0])
    parser.add_argument("--model", **cli_help.required("run folder, or a SavedModel version folder"))
    parser.add_argument("--dataset", choices=datasets.names(), default=datasets.DEFAULT, help="a registered dataset")
    parser.add_argument("--data-root", **cli_help.required("the dataset's root in its published layout"))
    parser.add_argument("--out", **cli_help.required("folder for activation_maps.png"))
    parser.add_argument("--queries", type=int, default=4, help="infrared query identities (rows)")
    parser.add_argument("--top-k", type=int, default=3, help="visible matches per query")
    args = parser.parse_args(argv)
    if args.queries < 1 or args.top_k < 1:
        parser.error("--queries and --top-k must be at least 1")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.api_core")
    from kdem_tf import evaluation as ev

    try:
        run(args)
    except (VisualizeError, maps.MapError, ev.EvaluationError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
