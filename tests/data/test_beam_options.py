"""Beam options through `kdem_tf.data.preprocess` and the pipeline: passed on unchanged, the DaskRunner
refused up front, and a runner that loses records caught by the record-count check (a real Beam run).

`LossyDirectRunner` below is a real Beam runner, named to Beam by its dotted path
(`--runner=tests.data.test_beam_options.LossyDirectRunner`, as any runner class can be): the
DirectRunner with one transform replaced, so that one record of the gallery split is dropped on
its way to the shard writer, as a faulty runner would lose it. It also records the options it was
given, to show what the CLI passed on.
"""
from __future__ import annotations

import os

import apache_beam as beam
import pytest
from apache_beam.pipeline import PTransformOverride
from apache_beam.runners.direct.direct_runner import DirectRunner

from kdem_tf.data import beam_options, preprocess, synthetic
from pipeline import configs
from kdem_tf.datasets import sysu as sysu_ds

LOSSY_RUNNER = f"{__name__}.LossyDirectRunner"
RECEIVED_OPTIONS = []  # the options each LossyDirectRunner run got (get_all_options of each)


def _drop_one_gallery_record(keyed_items):
    (split, shard), items = keyed_items
    items = sorted(items)
    return (split, shard), (items[1:] if split == "gallery" and shard == 0 else items)


class _LossyGroupByKey(beam.PTransform):
    def expand(self, pcoll):
        return pcoll | beam.GroupByKey() | beam.Map(_drop_one_gallery_record)


class _LoseARecord(PTransformOverride):
    def matches(self, applied_ptransform):
        return applied_ptransform.full_label == "GroupByShard"  # preprocess.run_preprocess's shard grouping

    def get_replacement_transform_for_applied_ptransform(self, applied_ptransform):
        return _LossyGroupByKey()


class LossyDirectRunner(DirectRunner):
    """The DirectRunner, losing the first record of the gallery's shard 0."""

    def run_pipeline(self, pipeline, options):
        RECEIVED_OPTIONS.append(options.get_all_options())
        pipeline.replace_all([_LoseARecord()])
        return super().run_pipeline(pipeline, options)


@pytest.fixture(scope="module")
def raw_sysu(tmp_path_factory):
    return sysu_ds.generate_synthetic(str(tmp_path_factory.mktemp("raw") / "sysu"), identities=4, images_per_camera=1,
                                   image_size=(16, 8), progress=False)


def test_a_runner_that_loses_records_fails_the_job_and_the_options_arrive_unchanged(raw_sysu, tmp_path, capsys):
    out = tmp_path / "tfrecords"
    planned = len(preprocess.plan_splits("sysu", raw_sysu)["gallery"])
    RECEIVED_OPTIONS.clear()
    code = preprocess.main(["--dataset", "sysu", "--data-root", raw_sysu, "--output", str(out), "--num-shards", "1",
                            f"--beam-arg=--runner={LOSSY_RUNNER}", "--beam-arg=--job_name=kdem-pass-through",
                            "--", "--experiments=kdem_marker", "--direct_num_workers", "1"])
    assert code == 2
    error = capsys.readouterr().err
    assert f"split 'gallery': {planned} images planned but {planned - 1} written or skipped" in error
    assert "the Beam runner lost records. Nothing was published" in error
    assert not out.exists()  # only the staging folder, named .tmp-*
    assert [n for n in os.listdir(tmp_path) if n.startswith("tfrecords.tmp-")]
    (options,) = RECEIVED_OPTIONS
    assert options["runner"] == LOSSY_RUNNER and options["job_name"] == "kdem-pass-through"
    assert "kdem_marker" in options["experiments"] and options["direct_num_workers"] == 1


@pytest.mark.parametrize("runner", ["DaskRunner", "dask", "apache_beam.runners.dask.dask_runner.DaskRunner"])
def test_the_dask_runner_is_refused_before_anything_runs(runner, raw_sysu, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preprocess.main(["--dataset", "sysu", "--data-root", raw_sysu, "--output", str(tmp_path / "out"),
                         "--", "--runner", runner])
    assert exit_info.value.code == 2
    assert f"Beam runner {runner!r} is not supported" in capsys.readouterr().err
    with pytest.raises(beam_options.UnsupportedRunnerError, match="finish_bundle"):  # the library call too
        preprocess.run_preprocess(preprocess.plan_splits("sysu", raw_sysu), raw_sysu, str(tmp_path / "out"),
                                  pipeline_options=preprocess.local_pipeline_options([f"--runner={runner}"]))
    with pytest.raises(beam_options.UnsupportedRunnerError, match="file sinks"):  # and the pipeline's Beam args
        configs.beam_pipeline_args(extra=[f"--runner={runner}"])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("argv", [
    ["--runner=FlinkRunner"],        # a Beam flag without --beam-arg or --
    ["--num-shard", "2"],            # an abbreviation of --num-shards
    ["--beam-args=--runner=X"],      # a misspelt flag
])
def test_unknown_and_abbreviated_flags_are_errors_naming_the_flag(argv, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        preprocess.main(["--dataset", "sysu", "--data-root", str(tmp_path), "--output", str(tmp_path / "o")] + argv)
    assert exit_info.value.code == 2
    assert f"unrecognized arguments: {' '.join(argv)}" in capsys.readouterr().err


def test_separator_and_runner_names():
    assert beam_options.split_at_separator(["--a", "1", "--", "--runner", "X", "--"]) == (["--a", "1"],
                                                                                         ["--runner", "X", "--"])
    assert beam_options.split_at_separator(["--a"]) == (["--a"], [])
    assert beam_options.runner_name(["--runner", "FlinkRunner", "--flink_master=h:8081"]) == "FlinkRunner"
    assert beam_options.runner_name(["--project=p"]) == ""
    for accepted in ("DirectRunner", "DataflowRunner", "FlinkRunner", "SparkRunner", "PortableRunner", LOSSY_RUNNER, ""):
        beam_options.check_runner(accepted)


def test_the_pipelines_beam_args_keep_the_given_options_in_order():
    given = ["--runner=DataflowRunner", "--project=p", "--region=europe-west4", "--temp_location=gs://b/tmp"]
    args = configs.beam_pipeline_args(extra=given)
    assert args[-len(given):] == given
    assert [a for a in args if a not in given] == [f"--setup_file={os.path.join(configs.REPO_ROOT, 'setup.py')}"]
