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
import requests

from kdem_tf.image_contract import INFRARED, MODALITIES
from serving.client.grpc_client import GrpcClient, GrpcClientError
from serving.client.rest_client import ServingClient, ServingClientError


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


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.client",
                                     description="Client for the kdem REST server / TF Serving.")
    parser.add_argument("command", choices=("status", "metadata", "predict", "search", "embed"))
    parser.add_argument("--tflite", metavar="OUT_DIR", help="embed: run this TFLite folder locally (no server)")
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--model", default="kdem")
    parser.add_argument("--version", type=int, default=None)
    parser.add_argument("--image", action="append", default=[], help="image file (repeatable)")
    parser.add_argument("--modality", default=INFRARED, choices=MODALITIES)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--grpc", default=None, metavar="HOST:PORT", help="use TF Serving's gRPC API there")
    auth = parser.add_mutually_exclusive_group()
    auth.add_argument("--token", default=None, help="bearer token")
    auth.add_argument("--token-file", default=None, help="file holding the bearer token")
    parser.add_argument("--ca-cert", default=None, help="CA / self-signed certificate to trust (TLS)")
    args = parser.parse_args(argv)
    if args.command == "embed":
        if not args.tflite or not args.image:
            parser.error("embed needs --tflite OUT_DIR and at least one --image")
        sys.exit(embed_tflite(args.tflite, args.image, args.modality))
    if args.grpc:
        client = GrpcClient(args.grpc, args.model, args.version, token=_token(args), ca_cert=args.ca_cert)
    else:
        client = ServingClient(args.url, args.model, args.version, token=_token(args), ca_cert=args.ca_cert)
    images = []
    for path in args.image:
        with open(path, "rb") as f:
            images.append(f.read())
    if args.command in ("predict", "search") and not images:
        parser.error(f"{args.command} needs at least one --image")
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
