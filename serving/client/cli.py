"""`python -m serving.client`: the command line of the REST and gRPC clients (+ our `:search`).

    python -m serving.client status  --url http://127.0.0.1:8501 [--model kdem]
    python -m serving.client predict --image a.jpg [--image b.jpg] --modality visible --url ...
    python -m serving.client search  --image q.jpg --modality infrared --k 10 --url ...
    python -m serving.client predict --grpc 127.0.0.1:8500 --image a.jpg ...      # gRPC instead of REST
    python -m serving.client embed --tflite OUT_DIR --image f.png --modality infrared   # TFLite, no server

    --token TOKEN | --token-file FILE   bearer token (a file holding just the token)
    --ca-cert PEM                       trust this CA (or self-signed certificate): https / TLS gRPC

`status`, `metadata` and `predict` speak TF Serving's REST or gRPC API only, so they work
against a stock `tensorflow_model_server` serving the embedder (REST 8501, gRPC 8500);
`search` needs `serving.server --index` (REST `:search`, gRPC the `search` signature).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

import numpy as np

from kdem_tf.image_contract import MODALITIES


def embed_tflite(folder: str, image_paths: Sequence[str], modality: str) -> int:
    """`python -m serving.client embed --tflite OUT_DIR --image F --modality M`: prints each embedding's summary."""
    from kdem_tf.evaluation.tflite_embedder import TFLiteEmbedder, TFLiteEmbedderError

    try:
        embedder = TFLiteEmbedder(folder)
        encoded = []
        for path in image_paths:
            with open(path, "rb") as f:
                encoded.append(f.read())
        embeddings = embedder.embed_bytes(encoded, [modality] * len(encoded), list(image_paths))
    except (TFLiteEmbedderError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for path, embedding in zip(image_paths, embeddings):
        print(f"{path}: {modality} via {embedder.path(modality)}, dim {len(embedding)}, "
              f"norm {np.linalg.norm(embedding):.4f}, first {np.round(embedding[:4], 4).tolist()}")
    return 0


def _token(args) -> Optional[str]:
    if args.token_file:
        with open(args.token_file) as f:
            return f.read().strip()
    return args.token


COMMANDS = {
    "status": "the served model's versions and their state (TF Serving's GetModelStatus)",
    "metadata": "the served model's signatures (TF Serving's GetModelMetadata)",
    "predict": "embed image files with the served model (REST :predict or gRPC Predict)",
    "search": "search the server's gallery index with image files (REST :search, gRPC `search`)",
    "embed": "embed image files with a TFLite export on this machine (no server)",
}


def build_parser() -> argparse.ArgumentParser:
    """`python -m serving.client COMMAND [flags]`: one subcommand each, its own flags and help."""
    from kdem_tf import cli_help

    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", default="http://127.0.0.1:8501", help="the REST server")
    server.add_argument("--grpc", default=None, metavar="HOST:PORT", help="use TF Serving's gRPC API there instead")
    server.add_argument("--model", default="kdem", help="the served model's name")
    server.add_argument("--version", type=int, default=None, help="a model version (default: the latest)")
    auth = server.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None, help="bearer token (default: none)")
    auth.add_argument("--token-file", default=None, help="file holding the bearer token (default: none)")
    server.add_argument("--ca-cert", default=None, help="CA / self-signed certificate to trust (TLS; default: none)")
    images = argparse.ArgumentParser(add_help=False)
    images.add_argument("--image", action="append", **cli_help.required("image file (repeatable)"))
    images.add_argument("--modality", choices=MODALITIES, **cli_help.required("the images' modality"))
    parser = cli_help.parser("serving.client", "Client for the kdem REST server / TF Serving (REST or gRPC).")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True, help="one of:")
    for name, text in COMMANDS.items():
        parents = [] if name == "embed" else [server]
        parents += [images] if name in ("predict", "search", "embed") else []
        sub = commands.add_parser(name, parents=parents, help=text, description=text, allow_abbrev=False,
                                  formatter_class=cli_help.DefaultsHelpFormatter)
        if name == "search":
            sub.add_argument("--k", type=int, default=10, help="results per query")
        if name == "embed":
            sub.add_argument("--tflite", metavar="OUT_DIR", **cli_help.required("the TFLite folder "
                                                                               "(python -m serving.export --tflite)"))
    return parser


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "embed":
        sys.exit(embed_tflite(args.tflite, args.image, args.modality))
    import requests

    from serving.client.grpc_client import GrpcClient, GrpcClientError
    from serving.client.rest_client import ServingClient, ServingClientError

    if args.grpc:
        client = GrpcClient(args.grpc, args.model, args.version, token=_token(args), ca_cert=args.ca_cert)
    else:
        client = ServingClient(args.url, args.model, args.version, token=_token(args), ca_cert=args.ca_cert)
    images = []
    for path in getattr(args, "image", []):
        with open(path, "rb") as f:
            images.append(f.read())
    try:
        if args.command == "status":
            print(json.dumps(client.status(), indent=2))
        elif args.command == "metadata":
            print(json.dumps(client.metadata(), indent=2))
        elif args.command == "predict":
            embeddings = client.predict(images, [args.modality] * len(images))
            for path, embedding in zip(args.image, embeddings):
                print(f"{path}: dim {len(embedding)}, norm {np.linalg.norm(embedding):.4f}, "
                      f"first {np.round(embedding[:4], 4).tolist()}")
        else:
            for path, results in zip(args.image, client.search(images, [args.modality] * len(images), args.k)):
                print(f"{path}:")
                for r in results:
                    print(f"  {r['rank']:3d}. id {r['person_id']:5d}  cam {r['camera']:2d}  "
                          f"score {r['score']:.4f}  {r['path']}")
    except (ServingClientError, GrpcClientError, requests.RequestException) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
