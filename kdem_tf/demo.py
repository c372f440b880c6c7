"""`make demo`: the main job on the built-in synthetic dataset.

    python -m kdem_tf.demo --out outputs/demo [--identities 40] [--skip-train]

Steps (each reused when its output is already complete):
1. generate a synthetic SYSU-MM01-layout dataset (`kdem_tf.data.synthetic`);
2. preprocess it with Beam into TFRecords (`kdem_tf.data.preprocess`) and print the summary;
3. train the demo preset (`kdem_tf.train`) and evaluate with the SYSU protocol.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Optional, Sequence

DEMO_IMAGE_SIZE = (64, 32)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="outputs/demo")
    parser.add_argument("--identities", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true", help="stop after preprocessing")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from kdem_tf.data import preprocess, synthetic

    raw = os.path.join(args.out, "data", "SYSU-MM01")
    tfrecords = os.path.join(args.out, "tfrecords")
    print(f"[1/3] synthetic SYSU-MM01 layout → {raw}")
    if not os.path.isdir(raw):
        synthetic.generate_sysu(raw, identities=args.identities, seed=args.seed, image_size=DEMO_IMAGE_SIZE)
    else:
        print("      (exists, reused)")
    print(f"[2/3] Beam preprocessing → {tfrecords}")
    summary_path = os.path.join(tfrecords, preprocess.SUMMARY_FILE)
    if os.path.exists(os.path.join(tfrecords, preprocess.SUCCESS_MARKER)):
        print("      (complete, reused)")
        with open(summary_path) as f:
            summary = json.load(f)
    else:
        splits = preprocess.plan_splits("sysu", raw)
        summary = preprocess.run_preprocess(splits, raw, tfrecords, image_size=DEMO_IMAGE_SIZE,
                                            settings={"dataset": "sysu", "data_root": raw})
    print(preprocess.format_summary(summary))
    if args.skip_train:
        return 0

    from kdem_tf import config as config_lib
    from kdem_tf.train import train

    run_dir = os.path.join(args.out, "run")
    print(f"[3/3] training the demo preset → {run_dir}")
    config = config_lib.load_config("demo")
    result = train(config, "sysu", tfrecords, run_dir)
    print(json.dumps({k: v for k, v in result.items() if k != "metrics"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
