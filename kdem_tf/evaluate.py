"""`python -m kdem_tf.evaluate`: SYSU-MM01 / RegDB / LLCM / CSV-manifest evaluation of a model or features.

    python -m kdem_tf.evaluate --dataset sysu --data-root data/SYSU-MM01 --features feats.npz \
        --mode all --output metrics.json --plots reports/eval [--rerank] [--gallery-sampling official]
    python -m kdem_tf.evaluate --dataset llcm --data-root data/LLCM --direction i2v --features feats.npz
    python -m kdem_tf.evaluate --dataset manifest --data-root cams/manifest.csv --model RUN_DIR

Features (`--features F.npz`): `paths` (str [N], relative to the data root exactly as
in the dataset, e.g. "cam3/0001/0001.jpg", "Thermal/1/x.bmp") and `features`
(float [N, D]); per-trial sets as `paths_trial{t}` / `features_trial{t}` (used for
trial t when present, else the shared pair). A model (`--model`) is a TensorFlow
SavedModel embedder, see `embed_images`: it gets the image files' bytes and resizes them
with its own image contract. Bad input exits with status 2 and one line.

    python -m kdem_tf.evaluate --dataset sysu --tfrecords data/sysu_tfrecords --model runs/x/export

evaluates a preprocessing output instead of the raw folder, through the same protocol code
(`kdem_tf.record_evaluation`): the TFRecords hold the paths, cameras, ids and original bytes.
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

from kdem_tf import evaluation as ev
from kdem_tf import match_threshold, reranking, tta
from kdem_tf import variants as variant_labels
from kdem_tf.model_embedding import embed_images

MONTAGE_QUERIES = 8
MONTAGE_TOP_K = 10


class FeatureTable:
    """Features by dataset-relative path. features: [N, D] float64, finite; paths unique."""

    def __init__(self, paths: Sequence[str], features: np.ndarray, source: str):
        self.source = source
        self.features = ev.check_features(features, source)
        self.paths = [_normalise_path(p.decode() if isinstance(p, bytes) else str(p)) for p in paths]
        if len(self.paths) != len(self.features):
            raise ev.EvaluationError(f"{source}: {len(self.paths)} paths but {len(self.features)} feature rows")
        self.index = {p: i for i, p in enumerate(self.paths)}
        if len(self.index) != len(self.paths):
            seen: set = set()
            dup = [p for p in self.paths if p in seen or seen.add(p)]
            raise ev.EvaluationError(f"{source}: {len(dup)} duplicate paths, first {dup[0]!r}")

    def lookup(self, paths: Sequence[str], what: str) -> np.ndarray:
        """[len(paths), D] rows of the given paths; names the first missing path and the count."""
        missing = [p for p in paths if p not in self.index]
        if missing:
            raise ev.EvaluationError(f"{self.source}: {len(missing)} of {len(paths)} {what} paths have no "
                                     f"features, first {missing[0]!r} (paths are relative to the data root)")
        return self.features[[self.index[p] for p in paths]]


def _normalise_path(path: str) -> str:
    path = path.replace("\\", "/")
    return path[2:] if path.startswith("./") else path


def load_feature_tables(npz_path: str) -> Dict[Optional[int], FeatureTable]:
    """Reads a features .npz → {None: shared table, t: table of trial t}."""
    try:
        data = np.load(npz_path, allow_pickle=False)
        arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise ev.EvaluationError(f"{npz_path}: features file not found") from None
    except ValueError as e:  # object arrays need pickle, which we refuse
        raise ev.EvaluationError(f"{npz_path}: unreadable ({e}); store paths as np.array(paths, dtype=str)") from None
    except OSError as e:
        raise ev.EvaluationError(f"{npz_path}: not a .npz file ({e})") from None
    tables = {}
    for key in arrays:
        if not key.startswith("features"):
            continue
        suffix = key[len("features"):]
        if suffix and not (suffix.startswith("_trial") and suffix[6:].isdigit()):
            continue
        trial = int(suffix[6:]) if suffix else None
        paths_key = "paths" + suffix
        if paths_key not in arrays:
            raise ev.EvaluationError(f"{npz_path}: has {key!r} but no {paths_key!r}")
        tables[trial] = FeatureTable(arrays[paths_key].reshape(-1), arrays[key], f"{npz_path}[{key}]")
    if not tables:
        raise ev.EvaluationError(f"{npz_path}: no 'features' array (expected 'paths' and 'features', "
                                 f"or 'paths_trial{{t}}' and 'features_trial{{t}}'); found {sorted(arrays)}")
    dims = {t.features.shape[1] for t in tables.values()}
    if len(dims) > 1:
        raise ev.EvaluationError(f"{npz_path}: feature sets have different dims {sorted(dims)}")
    return tables


# ----------------------------------------------------------------------------- CLI


def _features_provider(args, trials: List[ev.Trial], splits: Optional[dict] = None,
                       signature_name: str = "serving_default"):
    """Returns features_for(trial) -> (query [Q, D], gallery [G, D]) for --features or --model.

    `splits`: with --tfrecords, the evaluation splits (their stored bytes are embedded).
    `signature_name`: the SavedModel signature (`serving_flip` for --flip)."""
    if args.features:
        tables = load_feature_tables(args.features)

        def from_npz(trial: ev.Trial):
            table = tables.get(trial.trial, tables.get(None))
            if table is None:
                raise ev.EvaluationError(f"{args.features}: no features for trial {trial.trial} (neither "
                                         f"'features_trial{trial.trial}' nor 'features')")
            return (table.lookup(trial.query.paths, f"trial {trial.trial} query"),
                    table.lookup(trial.gallery.paths, f"trial {trial.trial} gallery"))
        return from_npz

    per_trial = "{trial}" in args.model  # e.g. RegDB: one trained model per trial
    if args.tfrecords:
        from kdem_tf import record_evaluation

        def table_for(model: str, trial_list) -> FeatureTable:
            paths, feats = record_evaluation.embed_saved_model(model, splits, args.batch_size, signature_name)
            return FeatureTable(paths, feats, model)
    else:
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
    """(path, modality) of every image of the trials, each once, in first-seen order (a manifest's
    query or gallery may mix modalities: each image keeps its own line's)."""
    seen: Dict[str, str] = {}
    for t in trial_list:
        for split in (t.query, t.gallery):
            for p, modality in zip(split.paths, split.path_modalities()):
                seen.setdefault(p, modality)
    return list(seen.items())


def image_root(args) -> str:
    """The folder dataset paths are relative to: --data-root, or a manifest's own folder."""
    if args.dataset == "manifest":
        from kdem_tf.data.manifest import image_root as manifest_root
        return manifest_root(args.data_root)
    return args.data_root


def _title(args) -> str:
    if args.dataset == "llcm":
        return "LLCM " + ("infrared to visible" if args.direction == "i2v" else
                          "visible to infrared (as DEEN/test.py scores it: infrared draw vs visible pool)")
    if args.dataset == "manifest":
        source = os.path.basename(args.data_root) if args.data_root else f"TFRecords {args.tfrecords}"
        return f"manifest {source}, single gallery, same id and camera dropped"
    if args.dataset == "sysu":
        shot = "multi-shot" if args.multi_shot else "single-shot"
        return f"SYSU-MM01 {args.mode}-search {shot}, {sampling_label(args)} gallery sampling"
    return "RegDB " + ("visible to thermal" if args.direction == "v2i" else "thermal to visible")


def sampling_label(args) -> str:
    """SYSU: "agw" (AGW's seeded draw) or "official" (the dataset's rand_perm_cam.mat); RegDB "index",
    LLCM "deen", manifest "single" (kdem_tf.variants)."""
    return variant_labels.sampling_of(getattr(args, "dataset", "sysu"), getattr(args, "gallery_sampling", None))


def format_table(title: str, rows: List[Tuple[str, dict]]) -> str:
    """The paper-style table: one row per trial and the mean, values in percent."""
    cols = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    names = ("Rank-1", "Rank-5", "Rank-10", "Rank-20", "mAP", "mINP")
    head = f"{'Trial':<7}" + "".join(f"{n:>9}" for n in names)
    lines = [title, "-" * len(head), head, "-" * len(head)]
    for i, (name, m) in enumerate(rows):
        if i == len(rows) - 1 and i > 0:  # the mean below the trials (a lone mean row needs none)
            lines.append("-" * len(head))
        lines.append(f"{name:<7}" + "".join(f"{m[c]:>9.2f}" for c in cols))
    return "\n".join(lines)


def format_variants(title: str, means: Dict[str, dict]) -> str:
    """One mean row per variant (plain, re-ranked, ...), each labelled with its gallery sampling and
    flip setting (kdem_tf.variants), values in percent."""
    cols = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
    names = ("Rank-1", "Rank-5", "Rank-10", "Rank-20", "mAP", "mINP")
    width = max(len("Variant"), *(len(label) for label in means)) + 2
    head = f"{'Variant':<{width}}" + "".join(f"{n:>9}" for n in names) + f"  {'Sampling':<10}Flip"
    lines = [title, "-" * len(head), head, "-" * len(head)]
    lines += [f"{label:<{width}}" + "".join(f"{m[c]:>9.2f}" for c in cols)
              + f"  {m.get('gallery_sampling', ''):<10}{'yes' if m.get('flip') else 'no'}"
              for label, m in means.items()]
    return "\n".join(lines)


def rerank_settings(rerank: Optional[reranking.RerankParams]) -> Optional[dict]:
    """{"k1", "k2", "lambda"} of a re-ranking, None without one."""
    return None if rerank is None else {"k1": rerank.k1, "k2": rerank.k2, "lambda": rerank.lambda_value}


def variant_metrics(label: str, results: List[ev.TrialResult],
                    rerank: Optional[reranking.RerankParams]) -> dict:
    """The metrics.json entry of one variant: its label and re-ranking parameters (None when plain),
    mean, cmc and per-trial numbers (percent)."""
    cmc, mAP, mINP = ev.average_trials(results)
    per_trial = [dict(trial=r.trial, query_count=r.num_query, gallery_size=r.num_gallery,
                      **ev.summary(r.cmc, r.mAP, r.mINP)) for r in results]
    return dict(variant=label, rerank=rerank_settings(rerank), **ev.summary(cmc, mAP, mINP),
                cmc=[float(v) * 100.0 for v in cmc], per_trial=per_trial)


def _rerank_params(text: str) -> reranking.RerankParams:
    try:
        return reranking.RerankParams.parse(text)
    except reranking.RerankError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def ranked_gallery(q_feats, g_feats, q_camids, g_camids, protocol: str, distance: str = "cosine",
                   k: int = 10, q_pids=None, g_pids=None) -> List[np.ndarray]:
    """Top-k gallery indices per query, as the metric ranks them (SYSU cam3 queries skip cam2;
    LLCM and manifest queries skip their own id in their own camera, which needs the pids)."""
    out = []
    for start, dist in ev.distance_chunks(q_feats, g_feats, distance):
        for row, order in enumerate(np.argsort(dist, axis=1)):
            if protocol == "sysu" and q_camids[start + row] == 3:
                order = order[np.asarray(g_camids)[order] != 2]
            elif protocol in ev.SAME_CAMERA_PROTOCOLS:
                order = order[(np.asarray(g_pids)[order] != q_pids[start + row]) |
                              (np.asarray(g_camids)[order] != q_camids[start + row])]
            out.append(order[:k])
    return out


def _plots(args, trial: ev.Trial, features_for, results, cmc_mean: np.ndarray) -> None:
    from kdem_tf import plots

    os.makedirs(args.plots, exist_ok=True)
    curves = [r.cmc * 100.0 for r in results] if len(results) > 1 else None
    plots.plot_cmc(cmc_mean * 100.0, os.path.join(args.plots, "cmc.png"),
                   f"{_title(args)}, {len(results)} trial(s), {args.distance}", curves)
    q_feats, g_feats = features_for(trial)
    picks = np.unique(np.linspace(0, len(trial.query.paths) - 1, MONTAGE_QUERIES).round().astype(int))
    ranked = ranked_gallery(q_feats[picks], g_feats, trial.query.cams[picks], trial.gallery.cams,
                               args.dataset, args.distance, MONTAGE_TOP_K, trial.query.pids[picks],
                               trial.gallery.pids)
    plots.retrieval_montage(
        image_root(args), [trial.query.paths[i] for i in picks],
        [f"id {trial.query.pids[i]} cam {trial.query.cams[i]}" for i in picks],
        [[trial.gallery.paths[j] for j in order] for order in ranked],
        [[bool(trial.gallery.pids[j] == trial.query.pids[i]) for j in order] for i, order in zip(picks, ranked)],
        os.path.join(args.plots, "montage.png"),
        title=f"{_title(args)}, trial {trial.trial}: query, then top-{MONTAGE_TOP_K} (green = same id)")


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kdem_tf.evaluate", description=__doc__.split("\n")[0])
    from kdem_tf.data.schema import DATASETS

    p.add_argument("--dataset", required=True, choices=DATASETS)
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data-root", help="dataset root in its published layout; manifest: the CSV file")
    data.add_argument("--tfrecords", help="a preprocessing output (kdem_tf.data.preprocess): same protocol, "
                                          "images from the TFRecords")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="SavedModel embedder or run folder; '{trial}' in it = one model per trial")
    src.add_argument("--features", help=".npz with 'paths' and 'features' (or '*_trial{t}')")
    p.add_argument("--mode", choices=tuple(ev.SYSU_GALLERY_CAMERAS), default="all", help="SYSU search mode")
    p.add_argument("--multi-shot", action="store_true", help="SYSU: 10 gallery images per id and camera")
    p.add_argument("--direction", choices=ev.REGDB_DIRECTIONS,
                   help="RegDB (default v2i) / LLCM (default i2v) query -> gallery; LLCM v2i is "
                        "DEEN/test.py's [2, 1] mode, see docs/evaluation.md")
    p.add_argument("--trials", type=int, default=10,
                   help="SYSU / LLCM draws 0..N-1, RegDB splits 1..N (max 10); a manifest has one")
    p.add_argument("--distance", choices=ev.DISTANCES, default="cosine")
    p.add_argument("--mean-only", action="store_true",
                   help="print only the mean row of each table (--output still has every trial)")
    p.add_argument("--output", help="write metrics JSON here")
    p.add_argument("--plots", help="write cmc.png and montage.png into this folder")
    p.add_argument("--batch-size", type=int, default=64, help="--model: images per call")
    p.add_argument("--gallery-sampling", choices=ev.GALLERY_SAMPLINGS, default="agw",
                   help="SYSU gallery draw per trial: AGW's seeded random.choice (default) or the official "
                        "exp/rand_perm_cam.mat of the dataset's MATLAB evaluation")
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
    if args.dataset != "sysu" and (args.multi_shot or args.mode != "all"):
        p.error("--mode and --multi-shot are SYSU options")
    if args.dataset != "sysu" and args.gallery_sampling != "agw":
        p.error("--gallery-sampling is a SYSU option (RegDB's trials are its index files, LLCM's "
                "draw is its authors')")
    if args.direction is not None and args.dataset not in ("regdb", "llcm"):
        p.error("--direction is a RegDB / LLCM option")
    if args.tfrecords and args.plots:
        p.error("--plots draws the retrieval montage from the raw images: use --data-root")
    if args.flip and not args.model:
        p.error("--flip embeds the images twice (plain and mirrored): it needs --model, not --features")
    if args.tfrecords and args.gallery_sampling != "agw":
        p.error("--gallery-sampling official reads exp/rand_perm_cam.mat of the raw folder: use --data-root")
    args.direction = args.direction or ("i2v" if args.dataset == "llcm" else "v2i")
    return args


def _trials(args: argparse.Namespace) -> Tuple[List[ev.Trial], Optional[dict]]:
    """The protocol trials, from the raw folder or from a preprocessing output (then with its splits)."""
    if args.tfrecords:
        from kdem_tf import record_evaluation

        splits = record_evaluation.load_eval_splits(args.dataset, args.tfrecords)
        return record_evaluation.record_trials(args.dataset, args.tfrecords, splits, args.mode, args.trials,
                                               args.multi_shot, args.direction), splits
    if args.dataset == "sysu":
        return ev.sysu_trials(args.data_root, args.mode, args.trials, args.multi_shot, sampling_label(args)), None
    if args.dataset == "llcm":
        from kdem_tf.protocols import llcm

        return llcm.llcm_trials(args.data_root, args.direction, args.trials), None
    if args.dataset == "manifest":
        from kdem_tf.protocols import manifest

        return manifest.manifest_trials(args.data_root), None
    return ev.regdb_trials(args.data_root, args.trials, args.direction), None


def run(args: argparse.Namespace) -> dict:
    """Evaluates, prints the table, writes JSON / plots; returns the metrics dict."""
    trials, splits = _trials(args)
    settings = {"mode": args.mode, "multi_shot": args.multi_shot} if args.dataset == "sysu" else \
        {} if args.dataset == "manifest" else {"direction": args.direction}
    pair_scores = match_threshold.PairScoreCollector(args.dataset)  # the same-person threshold's pairs
    features_for = pair_scores.wrap(_features_provider(args, trials, splits))
    rerank = getattr(args, "rerank", None) or None  # RerankParams (parse_args), or absent/False
    computed = ev.run_trials(trials, features_for, args.dataset, args.distance, rerank=rerank)
    if args.flip:  # the same trials on flip-averaged embeddings: their own rows
        flip_for = _features_provider(args, trials, splits, tta.FLIP_SIGNATURE)
        computed += [dataclasses.replace(r, variant=tta.flip_label(r.variant, ev.PLAIN))
                     for r in ev.run_trials(trials, flip_for, args.dataset, args.distance, rerank=rerank)]
    variants = ev.group_variants(computed)
    results = variants[ev.PLAIN]
    cmc, mAP, mINP = ev.average_trials(results)
    mean = ev.summary(cmc, mAP, mINP)
    per_trial = [dict(trial=r.trial, query_count=r.num_query, gallery_size=r.num_gallery,
                      **ev.summary(r.cmc, r.mAP, r.mINP)) for r in results]
    counts = sorted({r.num_query for r in results})
    metrics = dict(mean, cmc=[float(v) * 100.0 for v in cmc], per_trial=per_trial, dataset=args.dataset,
                   **settings, trials=[r.trial for r in results], num_trials=len(results),
                   query_count=counts[0] if len(counts) == 1 else [r.num_query for r in results],
                   gallery_sizes=[r.num_gallery for r in results], distance=args.distance,
                   source=args.model or args.features, data_root=args.data_root, tfrecords=args.tfrecords)
    rows = _table_rows(args, per_trial, mean)
    sizes = sorted(set(metrics["gallery_sizes"]))
    gallery = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    header = (f"{_title(args)} | {len(results)} trial(s) | query {metrics['query_count']} "
              f"{trials[0].query.modality} | gallery {gallery} {trials[0].gallery.modality} | {args.distance}")
    metrics["rerank"] = rerank_settings(rerank)
    metrics["gallery_sampling"] = sampling_label(args)
    metrics["flip"] = bool(args.flip)
    metrics["variants"] = {
        label: dict(variant_metrics(label, rs, rerank if "rerank" in label else None),
                    **variant_labels.describe(label, sampling_label(args), flip=label.startswith(tta.FLIP),
                                              rerank=rerank_settings(rerank) if "rerank" in label else None))
        for label, rs in variants.items()}
    print(format_table(f"{header} | {ev.PLAIN}", rows))
    for label, entry in metrics["variants"].items():
        if label != ev.PLAIN:
            how = "euclidean between L2-normalised features" if "rerank" in label else args.distance
            title = f"{header} | {label} on {how}"
            print("\n" + format_table(title, _table_rows(args, entry["per_trial"], entry)))
    if len(variants) > 1:
        print("\n" + format_variants(f"{_title(args)} | mean of {len(results)} trial(s), each variant apart",
                                     metrics["variants"]))
    metrics[match_threshold.METRICS_KEY] = match_threshold.threshold_report(*pair_scores.scores(), protocol=dict(
        dataset=args.dataset, **settings, trials=metrics["trials"], gallery_sampling=metrics["gallery_sampling"]))
    print("\n" + match_threshold.format_report(metrics[match_threshold.METRICS_KEY]))
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as f:
            json.dump(metrics, f, indent=2)
    if args.plots:
        _plots(args, trials[0], features_for, results, cmc)
        match_threshold.plot_threshold(metrics[match_threshold.METRICS_KEY],
                                       os.path.join(args.plots, "match_threshold.png"), header)
    return metrics


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
