"""`python -m serving.index`: embeds a gallery and builds its ScaNN index (serving/export/gallery_index.py)."""
from __future__ import annotations

import json
import sys

from kdem_tf import cli_help
from kdem_tf.image_contract import MODALITIES, VISIBLE


def build_parser():
    parser = cli_help.parser("serving.index", "Embeds a gallery with an exported embedder and builds its ScaNN index.")
    parser.add_argument("--model", **cli_help.required("embedder base path (or SavedModel folder)"))
    parser.add_argument("--gallery", **cli_help.required("image folder, TFRecord folder or glob pattern"))
    parser.add_argument("--out", **cli_help.required("index folder to create"))
    parser.add_argument("--modality", default=VISIBLE, choices=MODALITIES, help="the gallery images' modality")
    parser.add_argument("--batch-size", type=int, default=64, help="images per embedding call")
    parser.add_argument("--flip", action="store_true",
                        help="flip test-time augmentation: each gallery embedding averaged with its mirror's")
    parser.add_argument("--params", default=None, help="ScaNN parameters as JSON (default: auto_params)")
    parser.add_argument("--retrieval-model", default=None,
                        help="also export the retrieval SavedModel (embedder + ScaNN ops) as OUT/<version>")
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    from serving.export.gallery_index import build_index

    index = build_index(args.model, args.gallery, args.out, args.modality, args.batch_size,
                        json.loads(args.params) if args.params else None, flip=args.flip)
    print(f"index {args.out}: {len(index)} entries, {index.manifest['embedding_dim']}-d, params {index.params}")
    if args.retrieval_model:
        from serving.export.retrieval import export_retrieval_model

        path = export_retrieval_model(args.model, args.out, args.retrieval_model)
        print(f"retrieval model {path}")


if __name__ == "__main__":
    sys.exit(main())
