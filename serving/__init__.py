"""Serving for kdem-tf: embedder export, ScaNN gallery index, TF Serving-compatible REST server, client.

See docs/serving.md.
"""
