"""Evaluation: the metrics, the trial types and their running, the embedders of exported models.

    metrics.py        CMC / mAP / mINP under a ranking rule, chunked distances (numpy)
    trials.py         Trial, Split, RankingRule, EvalOptions, EvaluationError (numpy)
    results.py        run_trials, re-ranked variants, averages (numpy)
    same_camera.py    the "same id and camera dropped" ranking (torchreid, eval_llcm)
    reranking.py      k-reciprocal re-ranking
    variants.py       the labels of result variants (plain, flip, re-ranked; gallery sampling)
    features.py       features by dataset path (.npz tables)
    records.py        evaluation of a preprocessed dataset (TFRecords)
    embedding.py      embedding image files with an exported SavedModel / TFLite folder
    tflite_embedder.py, plots.py, tables.py

Which trials and which ranking rule a dataset has is the dataset's (`kdem_tf.datasets`); the
command line is `python -m kdem_tf.evaluate`. This package's face is numpy only: the names
below import no TensorFlow.
"""
from kdem_tf.evaluation.metrics import (DEFAULT_CHUNK_BYTES, DISTANCES, RANKS, check_features,  # noqa: F401
                                        distance_chunks, evaluate_features, evaluate_rank, ranking_rule)
from kdem_tf.evaluation.results import (TrialResult, average_trials, group_variants, run_trials,  # noqa: F401
                                        summary)
from kdem_tf.evaluation.trials import (MULTI_SHOT, EvalOptions, EvaluationError, RankingRule, Split,  # noqa: F401
                                       Trial, make_split, mixed_split)
from kdem_tf.evaluation.variants import PLAIN  # noqa: F401
