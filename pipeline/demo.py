"""`make demo`: the main job end to end on the built-in synthetic dataset.

    python -m pipeline.demo [--home outputs/demo] [--identities 100]

1. generates a synthetic SYSU-MM01-layout dataset (kdem_tf.data.synthetic);
2. runs the TFX pipeline: examples → validation → training (demo preset) → protocol
   evaluation → blessing → push → ScaNN gallery index;
3. evaluates the pushed SavedModel with `kdem_tf.evaluate` (SYSU all-search, 10 trials);
4. starts the REST server on 127.0.0.1, sends real infrared queries through the client
   against the visible gallery, and stops the server;
5. writes the report (HTML + PNGs) and prints where it is.

A re-run reuses the dataset and the pipeline cache, so it only re-does steps 3–5.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = 8


class _Steps:
    """Prints each step's header and, when the next one starts (or at the end), its time."""

    def __init__(self):
        self.times: List[tuple] = []
        self._current = None

    def start(self, number: int, text: str) -> None:
        self.finish()
        print(f"\n[{number}/5] {text}", flush=True)
        self._current = (number, text.split(" (")[0].split(" →")[0], time.time())

    def finish(self) -> None:
        if self._current:
            number, title, started = self._current
            seconds = time.time() - started
            self.times.append((number, title, seconds))
            print(f"      step {number} done in {seconds:.0f} s", flush=True)
            self._current = None

    def summary(self) -> str:
        self.finish()
        return "\n".join(f"  [{n}/5] {seconds / 60:5.1f} min  {title}" for n, title, seconds in self.times)


def _latest_version(base: str) -> str:
    from kdem_tf.artifacts import list_versions  # the one version-folder rule

    versions = list_versions(base)
    if not versions:
        raise SystemExit(f"demo: no pushed model under {base}: the pipeline did not bless the model "
                         f"(see its metrics above); lower --min-map or train longer")
    return os.path.join(base, str(versions[-1]))


def _wait_ready(ready_file: str, process: subprocess.Popen, seconds: float = 180.0) -> dict:
    """The ports the server bound (it writes them to --ready-file once it serves): no free-port race."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"demo: the server exited with code {process.returncode}")
        if os.path.exists(ready_file):
            with open(ready_file) as f:
                return json.load(f)
        time.sleep(0.5)
    raise SystemExit(f"demo: the server did not report ready in {seconds:.0f} s")


class BackgroundServer:
    """`serving.server` on 127.0.0.1 in a child process, started early so that its start-up (loading
    TensorFlow and the model) overlaps the protocol evaluation; `stop()` always ends it."""

    def __init__(self, model_base: str, index_dir: str, out_dir: str):
        os.makedirs(out_dir, exist_ok=True)
        self.log_path = os.path.join(out_dir, "server.log")
        self.ready_file = os.path.join(out_dir, "server-ready.json")
        if os.path.exists(self.ready_file):
            os.remove(self.ready_file)
        self._log = open(self.log_path, "w")
        self.process = subprocess.Popen([sys.executable, "-m", "serving.server", "--model-base", model_base,
                                         "--index", index_dir, "--host", "127.0.0.1", "--port", "0",
                                         "--grpc-port", "auto", "--ready-file", self.ready_file],
                                        stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def wait_ready(self) -> dict:
        return _wait_ready(self.ready_file, self.process)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


def query_server(server: BackgroundServer, data_root: str, out_dir: str) -> dict:
    """Searches the server with one infrared image of each of QUERIES test ids, then stops it."""
    from kdem_tf import datasets
    from kdem_tf.evaluation import plots
    from serving.client.rest_client import ServingClient

    demo = datasets.get(datasets.DEFAULT)
    query = demo.read_splits(data_root, {})[demo.eval_splits[0]]
    first_of_id = {}
    for record in query:
        first_of_id.setdefault(record.person_id, record)
    picks = list(first_of_id.values())[:QUERIES]
    try:
        ports = server.wait_ready()
        url = f"http://127.0.0.1:{ports['rest_port']}"
        print(f"      server pid {server.process.pid}: REST {url}, gRPC 127.0.0.1:{ports['grpc_port']} "
              f"(log: {server.log_path})", flush=True)
        client = ServingClient(url)
        status = client.status()
        images = []
        for record in picks:
            with open(os.path.join(data_root, record.path), "rb") as f:
                images.append(f.read())
        started = time.time()
        results = client.search(images, ["infrared"] * len(images), k=10)
        seconds = time.time() - started
    finally:
        server.stop()
    print(f"      status: {json.dumps(status)}")
    print(f"      {len(picks)} infrared queries searched in {seconds:.2f} s; server stopped")
    hits = 0
    for record, ranked in zip(picks, results):
        top = ranked[0]
        ok = top["person_id"] == record.person_id
        hits += ok
        print(f"      query {record.path} (id {record.person_id}) → top-1 {top['path']} id {top['person_id']} "
              f"score {top['score']:.3f} {'✓' if ok else '✗'}")
    montage = plots.retrieval_montage(
        data_root, [r.path for r in picks], [f"id {r.person_id}" for r in picks],
        [[m["path"] for m in ranked] for ranked in results],
        [[m["person_id"] == r.person_id for m in ranked] for r, ranked in zip(picks, results)],
        os.path.join(out_dir, "search_montage.png"), title="REST :search, infrared query -> visible gallery")
    return {"queries": len(picks), "top1_correct": hits, "seconds": round(seconds, 3), "montage": montage}


def _write_report(args, home: str, out_dir: str, data_root: str, dataset: str, report: dict, run_dir, model_version,
                  index_dir: str, metrics: dict, served: dict, started: float) -> str:
    """Step 5: the paper's Fig. 3 maps and the HTML report; returns its path."""
    from kdem_tf import visualize
    from kdem_tf.report import write_report

    # The paper's Fig. 3 maps (they need the run folder: a SavedModel exposes embeddings only).
    visualize.main(["--model", run_dir or model_version, "--dataset", dataset, "--data-root", data_root,
                    "--out", out_dir])

    notes = [f"REST search: {served['top1_correct']} of {served['queries']} infrared queries have a correct "
             f"top-1 visible match (montage below, built from the server's responses)."]
    evaluation = (report.get("ReidEvaluator", {}).get("outputs", {}).get("evaluation") or [None])[0]
    if evaluation and os.path.exists(os.path.join(evaluation, "metrics.json")):
        with open(os.path.join(evaluation, "metrics.json")) as f:
            decision = json.load(f)
        if not decision.get("blessed"):
            # The curves come from the latest training run; the metrics from the served version.
            notes.append(f"The latest training run (curves below) was not blessed ({'; '.join(decision['reasons'])}); "
                         f"the served and evaluated model is the earlier blessed version {model_version}.")
    return write_report(out_dir, run_dir or "", metrics, montage=served["montage"],
                        cmc_png=os.path.join(out_dir, "cmc.png"), notes=notes,
                        extra_settings={"home": home, "identities": args.identities, "model": model_version,
                                        "index": index_dir, "minutes": round((time.time() - started) / 60, 1)})


def main(argv: Optional[Sequence[str]] = None) -> int:
    from kdem_tf import cli_help

    parser = cli_help.parser("pipeline.demo", "The main job end to end on the built-in synthetic dataset (make demo): "
                             "data, the TFX pipeline, evaluation, the REST server and client, the report.")
    parser.add_argument("--home", default=os.path.join(REPO, "outputs", "demo"),
                        help="where the dataset, the pipeline's artifacts, the report and console.log go")
    parser.add_argument("--identities", type=int, default=100, help="identities of the synthetic dataset")
    parser.add_argument("--images-per-camera", type=int, default=3,
                        help="images per identity and camera of the synthetic dataset")
    parser.add_argument("--min-map", type=float, default=30.0, help="blessing threshold (mAP %%)")
    args = parser.parse_args(argv)
    started = time.time()
    home = os.path.abspath(args.home)
    from kdem_tf import console

    os.makedirs(home, exist_ok=True)
    console.log_beside(os.path.join(home, "console.log"))  # library messages (TF, Beam, TFX) go there
    steps = _Steps()

    from kdem_tf import config as config_lib
    from kdem_tf import datasets
    from pipeline import local_runner
    from pipeline.configs import PipelineSettings

    demo = datasets.get(datasets.DEFAULT)
    data_root = os.path.join(home, "data", demo.title)
    steps.start(1, f"synthetic {demo.title}-layout dataset → {data_root}")
    if os.path.isdir(data_root):
        print("      (exists, reused)")
    else:
        # Rendered at the demo preset's training size (fine detail survives in the infrared images).
        image_size = config_lib.load_config("demo").data.image_size
        demo.generate_synthetic(data_root, identities=args.identities, images_per_camera=args.images_per_camera,
                                image_size=image_size, seed=0)

    steps.start(2, "TFX pipeline (LocalDagRunner): examples → statistics/schema/validation → training → "
             "evaluation → blessing → push → gallery index")
    # Beam in_memory: on the demo's ~1,400 images, multi_processing spent ~45 s per Beam component
    # starting worker processes (ExampleGen 47 s vs 2 s, StatisticsGen 59 s vs 8 s, measured on the
    # 2-core Xeon); the record-count check guards both modes.
    settings = PipelineSettings(home=home, dataset=demo.name, data_root=data_root, preset="demo",
                                min_map=args.min_map, eval_trials=10, train_verbose=3, beam_mode="in_memory")
    settings = local_runner.resolve_settings(settings)
    settings = local_runner.run(settings)
    report = local_runner.run_report(settings)
    print(local_runner.format_report(settings, report))
    run_dir = (report.get("Trainer", {}).get("outputs", {}).get("model_run") or [None])[0]
    model_version = _latest_version(settings.serving_model_dir)
    index_dir = os.path.join(settings.index_base_dir, os.path.basename(model_version))

    out_dir = os.path.join(home, "report")
    # Step 4's server loads while step 3 evaluates (two cores: the two overlap).
    server = BackgroundServer(settings.serving_model_dir, index_dir, out_dir)
    try:
        steps.start(3, f"protocol evaluation of {model_version} (python -m kdem_tf.evaluate --model ...)")
        from kdem_tf import evaluate

        metrics_path = os.path.join(out_dir, "metrics.json")
        evaluate.main(["--dataset", demo.name, "--data-root", data_root, "--model", model_version,
                       "--output", metrics_path, "--plots", out_dir, "--mean-only"])
        with open(metrics_path) as f:
            metrics = json.load(f)
    except BaseException:
        server.stop()
        raise
    steps.start(4, "REST server on 127.0.0.1 (started in the background during step 3) + client queries")
    served = query_server(server, data_root, out_dir)

    steps.start(5, "report")
    path = _write_report(args, home, out_dir, data_root, demo.name, report, run_dir, model_version, index_dir,
                         metrics, served, started)
    print(f"\nreport: {path}\n(open it in a browser; every picture is a PNG beside it)")
    print(f"\ntime per step:\n{steps.summary()}")
    print(f"demo finished in {(time.time() - started) / 60:.1f} min (library messages: {console.log_path() or 'shown'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
