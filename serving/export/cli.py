"""`python -m serving.export`: a training run as an embedder SavedModel version, or as TFLite models.

    python -m serving.export --run RUN_DIR --out MODEL_BASE [--version N] [--compute-dtype bfloat16]
    python -m serving.export --run RUN_DIR --tflite OUT_DIR --quantize none|float16|int8|int8-full \
        [--calibration TFRECORDS] [--calibration-images N]

The SavedModel: `serving.export.saved_model`; the TFLite models: `serving.export.tflite`.
"""
from __future__ import annotations

from kdem_tf import cli_help
from kdem_tf.evaluation.match_threshold import FMR_TARGETS
from kdem_tf.evaluation.tflite_embedder import DEFAULT_CALIBRATION_IMAGES, QUANTIZATIONS


def build_parser():
    parser = cli_help.parser("serving.export", "Exports a training run's inference model as a TF Serving embedder "
                                               "SavedModel version, or as per-modality TFLite models.")
    parser.add_argument("--run", **cli_help.required("training run folder (inference_model.keras, run_info.json)"))
    parser.add_argument("--out", help="TF Serving model base path (required unless --tflite)")
    parser.add_argument("--version", type=int, default=None, help="the version number (default: max existing + 1)")
    parser.add_argument("--compute-dtype", choices=("float32", "bfloat16"), default="float32",
                        help="SavedModel compute dtype (float32 whatever the run trained in)")
    parser.add_argument("--match-threshold-from", metavar="METRICS_JSON",
                        help="record the same-person threshold kdem_tf.evaluate calibrated (its metrics.json)")
    parser.add_argument("--fmr", type=float, default=FMR_TARGETS[-1], help="false-match rate of that threshold")
    parser.add_argument("--tflite", metavar="OUT_DIR", help="write per-modality TFLite models here instead")
    parser.add_argument("--quantize", choices=QUANTIZATIONS, default="none",
                        help="--tflite: none (float32), float16 (weights), int8 (integer stem + trunk, float head) "
                             "or int8-full (every op integer); the int8 ones need --calibration")
    parser.add_argument("--calibration", metavar="TFRECORDS", help="--tflite int8: TFRecords folder (train split)")
    parser.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES,
                        help="--tflite int8: calibration images per modality")
    return parser


def main(argv=None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    from kdem_tf.evaluation import match_threshold
    from serving.export import saved_model, tflite

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
