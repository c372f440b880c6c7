"""`python -m serving.export`: a training run as an embedder SavedModel version, or as TFLite models.

    python -m serving.export --run RUN_DIR --out MODEL_BASE [--version N] [--compute-dtype bfloat16]
    python -m serving.export --run RUN_DIR --tflite OUT_DIR --quantize none|float16|int8|int8-full \
        [--calibration TFRECORDS] [--calibration-images N]

The SavedModel: `serving.export.saved_model`; the TFLite models: `serving.export.tflite`.
"""
from __future__ import annotations

import argparse

from kdem_tf.evaluation import match_threshold
from serving.export import saved_model, tflite


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.export",
                                     description="Exports the KDEM inference model as a TF Serving embedder "
                                                 "SavedModel.")
    parser.add_argument("--run", required=True, help="training run folder (inference_model.keras, run_info.json)")
    parser.add_argument("--out", help="TF Serving model base path (required unless --tflite)")
    parser.add_argument("--version", type=int, default=None, help="default: max existing + 1")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="SavedModel compute dtype (default float32, whatever the run trained in)")
    parser.add_argument("--match-threshold-from", metavar="METRICS_JSON",
                        help="record the same-person threshold kdem_tf.evaluate calibrated (its metrics.json)")
    parser.add_argument("--fmr", type=float, default=match_threshold.FMR_TARGETS[-1],
                        help="false-match rate of that threshold (default %(default)g)")
    tflite.add_arguments(parser)
    args = parser.parse_args(argv)
    extra = {}
    if args.match_threshold_from:
        try:
            extra["match_threshold"] = match_threshold.threshold_record(args.match_threshold_from, args.fmr)
        except match_threshold.ThresholdError as error:
            parser.error(str(error))
    if args.tflite:
        raise SystemExit(tflite.run_cli(args))
    if not args.out:
        parser.error("--out (or --tflite) is required")
    path = saved_model.export_embedder(args.run, args.out, args.version, compute_dtype=args.compute_dtype,
                                       extra_info=extra)
    info = saved_model.read_info(path)
    print(f"exported {path} (image contract {info['image_contract']}, embedding dim {info['embedding_dim']})")
    if "match_threshold" in info:
        record = info["match_threshold"]
        print(f"same-person threshold {record['threshold']:.4f} at FMR {record['fmr']:g} (TMR "
              f"{100 * record['tmr']:.2f}%), from {record['source']['file']}")
