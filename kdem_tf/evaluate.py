"""`python -m kdem_tf.evaluate`: a dataset's protocol on a model or on features (any registered dataset).

    python -m kdem_tf.evaluate --dataset sysu --data-root data/SYSU-MM01 --features feats.npz \
        --mode all --output metrics.json --plots reports/eval [--rerank] [--gallery-sampling official]
    python -m kdem_tf.evaluate --dataset llcm --data-root data/LLCM --direction i2v --features feats.npz
    python -m kdem_tf.evaluate --dataset manifest --data-root cams/manifest.csv --model RUN_DIR

Features (`--features F.npz`): `paths` (str [N], relative to the data root exactly as
in the dataset, e.g. "cam3/0001/0001.jpg", "Thermal/1/x.bmp") and `features`
(float [N, D]); per-trial sets as `paths_trial{t}` / `features_trial{t}` (used for
trial t when present, else the shared pair). A model (`--model`) is a TensorFlow
SavedModel embedder, see `kdem_tf.evaluation.embedding`: it gets the image files' bytes and resizes
them with its own image contract. Bad input exits with status 2 and one line.

    python -m kdem_tf.evaluate --dataset sysu --tfrecords data/sysu_tfrecords --model runs/x/export

evaluates a preprocessing output instead of the raw folder, through the same protocol code
(`kdem_tf.evaluation.records`): the TFRecords hold the paths, cameras, ids and original bytes.
The protocol options (--mode, --direction, ...) are the datasets' own (kdem_tf/datasets/).
This module is the command line only: the library is `kdem_tf.evaluation`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from kdem_tf.artifacts import SERVING_SIGNATURE
from kdem_tf import datasets, tta
from kdem_tf.datasets import cli_options
from kdem_tf import evaluation as ev
from kdem_tf.evaluation import match_threshold, reranking, tables, variants
from kdem_tf.evaluation.features import FeatureTable, load_feature_tables

MONTAGE_QUERIES = 8
MONTAGE_TOP_K = 10


# ----------------------------------------------------------------------------- arguments


def _rerank_params(text: str) -> reranking.RerankParams:
    try:
        return reranking.RerankParams.parse(text)
    except reranking.RerankError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    from kdem_tf import cli_help

    p = cli_help.parser("kdem_tf.evaluate", __doc__.split("\n")[0] + " One of --data-root / --tfrecords and one "
                        "of --model / --features is required.")
    p.add_argument("--dataset", choices=datasets.names(), **cli_help.required("the dataset's evaluation protocol"))
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-root", help="dataset root in its published layout; manifest: the CSV file")
    data.add_argument("--tfrecords", help="a preprocessing output (kdem_tf.data.preprocess): same protocol, "
                                          "images from the TFRecords")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="SavedModel embedder or run folder; '{trial}' in it = one model per trial")
    src.add_argument("--features", help=".npz with 'paths' and 'features' (or '*_trial{t}')")
    owned = cli_options.gather("eval_options")
    cli_options.add(p, owned)
    p.add_argument("--trials", type=int, default=10,
                   help="gallery draws 0..N-1 or index splits 1..N (max 10); a manifest has one")
    p.add_argument("--distance", choices=ev.DISTANCES, default="cosine", help="query-gallery distance")
    p.add_argument("--mean-only", action="store_true",
                   help="print only the mean row of each table (--output still has every trial)")
    p.add_argument("--output", help="write metrics JSON here (and the library log beside it, as NAME.console.log)")
    p.add_argument("--plots", help="write cmc.png and montage.png into this folder")
    p.add_argument("--batch-size", type=int, default=64, help="--model: images per call")
    p.add_argument("--flip", action="store_true",
                   help="--model: also report flip test-time augmentation (each embedding averaged with its "
                        "horizontal mirror's, then L2-normalised; the SavedModel's serving_flip), as its own rows")
    p.add_argument("--rerank", action="store_true",
                   help="also report k-reciprocal re-ranked numbers (Zhong et al. 2017), as their own rows")
    p.add_argument("--rerank-params", type=_rerank_params, metavar="K1,K2,LAMBDA",
                   help=f"re-ranking parameters (implies --rerank; default {reranking.RerankParams().k1},"
                        f"{reranking.RerankParams().k2},{reranking.RerankParams().lambda_value})")
    args = p.parse_args(argv)
    if args.rerank_params is not None or args.rerank:
        args.rerank = args.rerank_params or reranking.RerankParams()
    if not 1 <= args.trials <= 10:
        p.error("--trials must be 1..10")
    cli_options.refuse_foreign(p, args, owned)
    if args.tfrecords and args.plots:
        p.error("--plots draws the retrieval montage from the raw images: use --data-root")
    if args.flip and not args.model:
        p.error("--flip embeds the images twice (plain and mirrored): it needs --model, not --features")
    args.options = eval_options(args)
    return args


def eval_options(args: argparse.Namespace) -> ev.EvalOptions:
    """The protocol options of the parsed arguments, with the dataset's defaults (direction) filled in."""
    values = {option.field: getattr(args, option.dest)
              for option, owners in cli_options.gather("eval_options").values()
              if option.field and args.dataset in owners and hasattr(args, option.dest)}
    return datasets.get(args.dataset).check_options(ev.EvalOptions(trials=args.trials, **values))


def image_root(args) -> str:
    """The folder dataset paths are relative to (`Dataset.image_root`: a manifest's is its CSV's folder)."""
    return datasets.get(args.dataset).image_root(args.data_root)


def source_label(args) -> str:
    return os.path.basename(args.data_root) if args.data_root else f"TFRecords {args.tfrecords}"


# ----------------------------------------------------------------------------- features and trials


def _features_provider(args, trials: List[ev.Trial], splits: Optional[dict] = None,
                       signature_name: str = SERVING_SIGNATURE):
    """Returns features_for(trial) -> (query [Q, D], gallery [G, D]) for --features or --model.

    `splits`: with --tfrecords, the evaluation splits (their stored bytes are embedded).
    `signature_name`: the SavedModel signature (`serving_flip` for --flip)."""
    if args.features:
        tables_by_trial = load_feature_tables(args.features)

        def from_npz(trial: ev.Trial):
            table = tables_by_trial.get(trial.trial, tables_by_trial.get(None))
            if table is None:
                raise ev.EvaluationError(f"{args.features}: no features for trial {trial.trial} (neither "
                                         f"'features_trial{trial.trial}' nor 'features')")
            return (table.lookup(trial.query.paths, f"trial {trial.trial} query"),
                    table.lookup(trial.gallery.paths, f"trial {trial.trial} gallery"))
        return from_npz

    per_trial = "{trial}" in args.model  # e.g. RegDB: one trained model per trial
    if args.tfrecords:
        from kdem_tf.evaluation import records

        def table_for(model: str, trial_list) -> FeatureTable:
            paths, feats = records.embed_saved_model(model, splits, args.batch_size, signature_name)
            return FeatureTable(paths, feats, model)
    else:
        from kdem_tf.evaluation.embedding import embed_images

        def table_for(model: str, trial_list) -> FeatureTable:
            recs = _records(trial_list)
            return FeatureTable([p for p, _ in recs],
                                embed_images(model, image_root(args), recs, args.batch_size, signature_name), model)

    shared = None if per_trial else table_for(args.model, trials)

    def from_model(trial: ev.Trial):
        table = table_for(args.model.format(trial=trial.trial), [trial]) if per_trial else shared
        return table.lookup(trial.query.paths, "query"), table.lookup(trial.gallery.paths, "gallery")
    return from_model


def _records(trial_list) -> List[Tuple[str, str]]:
    """(path, modality) of every image of the trials, each once, in first-seen order (a side may mix
    modalities: each image keeps its own)."""
    seen: Dict[str, str] = {}
    for t in trial_list:
        for split in (t.query, t.gallery):
            for p, modality in zip(split.paths, split.path_modalities()):
                seen.setdefault(p, modality)
    return list(seen.items())


def _trials(args: argparse.Namespace) -> Tuple[List[ev.Trial], Optional[dict]]:
    """The protocol trials, from the raw folder or from a preprocessing output (then with its splits)."""
    if args.tfrecords:
        from kdem_tf.evaluation import records

        splits = records.load_eval_splits(args.dataset, args.tfrecords)
        return records.record_trials(args.dataset, args.tfrecords, splits, args.options), splits
    return datasets.get(args.dataset).trials_from_folder(args.data_root, args.options), None


# ----------------------------------------------------------------------------- run


def _plots(args, title: str, trial: ev.Trial, features_for, results, cmc_mean: np.ndarray) -> None:
    from kdem_tf.evaluation import plots

    os.makedirs(args.plots, exist_ok=True)
    curves = [r.cmc * 100.0 for r in results] if len(results) > 1 else None
    plots.plot_cmc(cmc_mean * 100.0, os.path.join(args.plots, "cmc.png"),
                   f"{title}, {len(results)} trial(s), {args.distance}", curves)
    q_feats, g_feats = features_for(trial)
    picks = np.unique(np.linspace(0, len(trial.query.paths) - 1, MONTAGE_QUERIES).round().astype(int))
    ranked = tables.ranked_gallery(q_feats[picks], g_feats, trial.query.cams[picks], trial.gallery.cams,
                                   args.dataset, args.distance, MONTAGE_TOP_K, trial.query.pids[picks],
                                   trial.gallery.pids)
    plots.retrieval_montage(
        image_root(args), [trial.query.paths[i] for i in picks],
        [f"id {trial.query.pids[i]} cam {trial.query.cams[i]}" for i in picks],
        [[trial.gallery.paths[j] for j in order] for order in ranked],
        [[bool(trial.gallery.pids[j] == trial.query.pids[i]) for j in order] for i, order in zip(picks, ranked)],
        os.path.join(args.plots, "montage.png"),
        title=f"{title}, trial {trial.trial}: query, then top-{MONTAGE_TOP_K} (green = same id)")


def _compute(args, trials, splits) -> Tuple[Dict[str, List[ev.TrialResult]], object, object]:
    """{variant label: trial results} (plain, re-ranked, flip...), the plain features provider and the
    protocol's pair scores of the plain embeddings (the same-person threshold's)."""
    pair_scores = match_threshold.PairScoreCollector(args.dataset)
    features_for = pair_scores.wrap(_features_provider(args, trials, splits))
    rerank = getattr(args, "rerank", None) or None  # RerankParams (parse_args), or absent/False
    computed = ev.run_trials(trials, features_for, args.dataset, args.distance, rerank=rerank)
    if args.flip:  # the same trials on flip-averaged embeddings: their own rows
        flip_for = _features_provider(args, trials, splits, tta.FLIP_SIGNATURE)
        computed += [dataclasses.replace(r, variant=tta.flip_label(r.variant, ev.PLAIN))
                     for r in ev.run_trials(trials, flip_for, args.dataset, args.distance, rerank=rerank)]
    return ev.group_variants(computed), features_for, pair_scores


def run(args: argparse.Namespace) -> dict:
    """Evaluates, prints the table, writes JSON / plots; returns the metrics dict."""
    if not hasattr(args, "options"):  # a Namespace built by hand, not by parse_args
        args.options = eval_options(args)
    dataset = datasets.get(args.dataset)
    trials, splits = _trials(args)
    grouped, features_for, pair_scores = _compute(args, trials, splits)
    results = grouped[ev.PLAIN]
    cmc, mAP, mINP = ev.average_trials(results)
    mean = ev.summary(cmc, mAP, mINP)
    per_trial = tables.per_trial_rows(results)
    counts = sorted({r.num_query for r in results})
    sampling = dataset.sampling_label(args.options)
    rerank = getattr(args, "rerank", None) or None
    metrics = dict(mean, cmc=[float(v) * 100.0 for v in cmc], per_trial=per_trial, dataset=args.dataset,
                   **dataset.eval_settings(args.options), trials=[r.trial for r in results],
                   num_trials=len(results),
                   query_count=counts[0] if len(counts) == 1 else [r.num_query for r in results],
                   gallery_sizes=[r.num_gallery for r in results], distance=args.distance,
                   source=args.model or args.features, data_root=args.data_root, tfrecords=args.tfrecords)
    metrics["rerank"] = tables.rerank_settings(rerank)
    metrics["gallery_sampling"] = sampling
    metrics["flip"] = bool(args.flip)
    metrics["variants"] = {
        label: dict(tables.variant_metrics(label, rs, rerank if "rerank" in label else None),
                    **variants.describe(label, sampling, flip=label.startswith(tta.FLIP),
                                        rerank=tables.rerank_settings(rerank) if "rerank" in label else None))
        for label, rs in grouped.items()}
    metrics[match_threshold.METRICS_KEY] = match_threshold.threshold_report(*pair_scores.scores(), protocol=dict(
        dataset=args.dataset, **dataset.eval_settings(args.options), trials=metrics["trials"],
        gallery_sampling=sampling))
    title = dataset.describe(args.options, source_label(args))
    header = _print_tables(args, title, metrics, trials, per_trial, mean, len(results))
    print("\n" + match_threshold.format_report(metrics[match_threshold.METRICS_KEY]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
    if args.plots:
        _plots(args, title, trials[0], features_for, results, cmc)
        match_threshold.plot_threshold(metrics[match_threshold.METRICS_KEY],
                                       os.path.join(args.plots, "match_threshold.png"), header)
    return metrics


def _print_tables(args, title: str, metrics: dict, trials, per_trial, mean, num_results: int) -> str:
    """Prints the plain table, one per other variant and the variants' means; returns the header line."""
    sizes = sorted(set(metrics["gallery_sizes"]))
    gallery = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    header = (f"{title} | {num_results} trial(s) | query {metrics['query_count']} "
              f"{trials[0].query.modality} | gallery {gallery} {trials[0].gallery.modality} | {args.distance}")
    print(tables.format_table(f"{header} | {ev.PLAIN}", _table_rows(args, per_trial, mean)))
    for label, entry in metrics["variants"].items():
        if label != ev.PLAIN:
            how = "euclidean between L2-normalised features" if "rerank" in label else args.distance
            print("\n" + tables.format_table(f"{header} | {label} on {how}",
                                             _table_rows(args, entry["per_trial"], entry)))
    if len(metrics["variants"]) > 1:
        print("\n" + tables.format_variants(f"{title} | mean of {num_results} trial(s), each variant apart",
                                            metrics["variants"]))
    return header


def _table_rows(args, per_trial: List[dict], mean: dict) -> List[Tuple[str, dict]]:
    """A table's rows: one per trial and the mean (--mean-only: the mean; --output keeps every trial)."""
    if args.mean_only:
        return [("Mean", mean)]
    return [(str(r["trial"]), r) for r in per_trial] + [("Mean", mean)]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    if args.output:
        from kdem_tf import console

        console.log_beside(os.path.splitext(os.path.abspath(args.output))[0] + ".console.log")
    # TF is imported for file access (and --model); its start-up log lines and a
    # google-api-core version notice would bury the table and the one-line errors
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"google\.api_core")
    try:
        run(args)
    except ev.EvaluationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
