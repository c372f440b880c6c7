"""Run every benchmark once on this machine; write benchmarks/RESULTS.md and benchmarks/results.json.

    python -m benchmarks.run_all [--quick] [--only data,train,evaluation,scann,serving] [--xla]
                                 [--out-md benchmarks/RESULTS.md] [--out-json benchmarks/results.json]
    python -m benchmarks.run_all --render benchmarks/results.json   # re-make RESULTS.md only

Each benchmark script runs as its own subprocess with `--json <tmpfile>`; its figures are
put next to the targets from the issues, as ratios where a target is a ratio. A benchmark
that fails (or runs past its time limit) is reported as failed, with the last line of its
output, and the others still run. `make bench` runs the default sizes (about 50 minutes on a
2-core CPU with one timing per figure and three demo runs; longer since the 5 timed repeats and
the fourth demo run, not re-measured); `--quick` uses smaller sizes (about 20 minutes before).
The table's rows (figures against targets, with the benchmarks' verdicts): benchmarks/target_rows.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchmarks.common import machine_info
from benchmarks.target_rows import markdown_table, table_rows

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
NAMES = ("data", "train", "evaluation", "reranking", "scann", "serving", "demo", "edge")
# Library chatter left out of the echoed progress and of the error line (kept in results.json's output tail).
NOISE = re.compile(r"FutureWarning|warnings\.warn|Unable to register cu|cudart_stub|cuda drivers|TF-TRT|oneDNN custom"
                   r"|cpu_feature_guard|To enable the following instructions|apache_beam\.runners\.portability"
                   r"|\d+%\|.*\|")
ERROR = re.compile(r"^(\w+\.)*\w*(Error|Exception|Exit|Interrupt)\b|^Killed|failed")


# --------------------------------------------------------------------------- plans

def plan(name: str, quick: bool, xla: bool) -> dict:
    """Command line (after `python -m benchmarks.bench_<name>`), time limit and a note on the sizes."""
    if name == "data":
        ids = 20 if quick else 40
        copies = 3 if quick else 5
        return {"args": ["--identities", str(ids), "--copies", str(copies), "--image-size", "288x144"],
                "timeout": 900 if quick else 1500,
                "note": f"synthetic SYSU-like set, {ids} identities, each image + {copies} copies, 288x144; "
                        "pipeline and KDEM step at DataConfig's P x K, 5 repeats each"}
    if name == "train":
        if quick:
            args, note = (["--image-size", "144x72", "--pairs", "8", "--steps", "2", "--repeats", "5"],
                          "144x72 (quick: not 288x144), 8 pairs, 5 repeats of 2 steps")
        else:
            args, note = (["--image-size", "288x144", "--pairs", "8", "--steps", "3", "--repeats", "5"],
                          "288x144, 8 pairs, 5 repeats of 3 steps")
        if xla:
            args.append("--xla")
        return {"args": args, "timeout": 1200 if quick else 1800, "note": note}
    if name == "evaluation":
        return {"args": [], "timeout": 600 if quick else 900,
                "note": "SYSU-sized 3,803 x 301 x 10 trials; 10k x 10k"}
    if name == "reranking":
        gallery = "5000" if quick else "10000"
        return {"args": ["--large-gallery", gallery], "timeout": 600 if quick else 900,
                "note": f"SYSU-sized 3,803 x 301, 2048-d; 3,803 x {int(gallery):,}, 512-d"}
    if name == "scann":
        sizes = ["10000", "50000"] if quick else ["10000", "100000", "200000"]
        return {"args": ["--sizes", *sizes], "timeout": 900 if quick else 1500,
                "note": "2048-d clustered galleries of " + "/".join(f"{int(s) // 1000}k" for s in sizes)}
    if name == "serving":
        requests = 50 if quick else 200
        return {"args": ["--clients", "8", "--requests", str(requests)], "timeout": 600 if quick else 900,
                "note": f"random-init KDEM 288x144, 8 clients x {requests} one-image requests"}
    if name == "demo":
        runs = "float32:0,mixed_bfloat16:0" if quick else "float32:0,mixed_bfloat16:0,float32:1,mixed_bfloat16:1"
        return {"args": ["--runs", runs], "timeout": 1500 if quick else 3000,
                "note": f"demo preset on 100 synthetic ids (96x48), runs {runs}"}
    if name == "edge":
        sizes = "96x48" if quick else "288x144,96x48"
        return {"args": ["--sizes", sizes, "--seconds", "3" if quick else "5"], "timeout": 1200 if quick else 2400,
                "note": f"random-init KDEM at {sizes}: SavedModel f32/bf16, TFLite f32/f16/int8 (infrared model)"}
    raise ValueError(name)


# --------------------------------------------------------------------------- running

def run_benchmark(name: str, spec: dict, log_dir: str) -> dict:
    """Run one benchmark script, streaming its output; returns status, seconds, result or error."""
    json_path = os.path.join(log_dir, f"{name}.json")
    cmd = [sys.executable, "-m", f"benchmarks.bench_{name}", *spec["args"], "--json", json_path]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
               PYTHONWARNINGS=os.environ.get("PYTHONWARNINGS", "ignore::FutureWarning"),
               PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), PYTHONUNBUFFERED="1")
    shown = " ".join(["python", "-m", f"benchmarks.bench_{name}", *spec["args"]])
    print(f"\n=== [{name}] {shown}  (limit {spec['timeout']} s)", flush=True)
    started = time.time()
    lines: list = []
    # Own process group: on a time-out the benchmark and what it started (servers, workers) end together.
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, bufsize=1, start_new_session=True)

    def pump():
        for line in process.stdout:
            line = line.rstrip()
            if line and not NOISE.search(line):
                lines.append(line)
                print(f"  [{name}] {line}", flush=True)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    timed_out = False
    try:
        process.wait(timeout=spec["timeout"])
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=20)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()
    reader.join(timeout=10)
    seconds = round(time.time() - started, 1)
    record = {"name": name, "command": shown, "note": spec["note"], "seconds": seconds,
              "returncode": process.returncode, "output_tail": lines[-40:]}
    last = next((line for line in reversed(lines) if ERROR.search(line.strip())), lines[-1] if lines else "")
    if timed_out:
        record.update(status="failed", error=f"timed out after {spec['timeout']} s"
                      + (f"; last output: {last}" if last else ""))
    elif process.returncode != 0:
        record.update(status="failed", error=last or f"exit status {process.returncode}")
    elif not os.path.exists(json_path):
        record.update(status="failed", error=f"no JSON written; last output: {last}")
    else:
        with open(json_path) as f:
            result = json.load(f)
        result.pop("machine", None)  # described once, at the top
        record.update(status="ok", result=result)
    print(f"=== [{name}] {record['status']} in {seconds:.0f} s"
          + (f": {record['error']}" if record["status"] != "ok" else ""), flush=True)
    return record


# --------------------------------------------------------------------------- output

def write_markdown(path: str, report: dict, rows: list) -> str:
    m = report["machine"]
    quick = report["mode"] == "quick"
    parts = [
        "# Benchmark results",
        "",
        "## How to reproduce",
        "",
        "- `make bench` — all benchmarks at the default sizes (about 50 minutes on a 2-core CPU before the 5 timed "
        "repeats and the fourth demo run; longer now).",
        "- `python -m benchmarks.run_all --quick` — smaller sizes (about 20 minutes): fewer identities/steps, "
        "training at 144x72, ScaNN at 10k/50k, 8 x 50 serving requests, two demo-preset runs instead of four (so no verdict on bfloat16's loss curve).",
        "- `python -m benchmarks.run_all --only train,serving` — a subset; `--xla` adds XLA-on training runs.",
        "- Each benchmark is also a script of its own: `python -m benchmarks.bench_<name> --help`.",
        "",
        "The machine these ran on is shared with other jobs and noisy: absolute times move between runs. "
        "Compare the **ratios measured within one run** (KDEM / ResNet-50, bf16 / float32, ScaNN / exact, "
        "server / in-process, pipeline / step), not absolute figures across runs or machines. "
        "Raw figures of every benchmark are in `results.json`.",
        "",
        "## This run",
        "",
        f"- mode: **{report['mode']}**" + (" (smaller sizes; see the notes per benchmark)" if quick else ""),
        f"- date: {report['started']} (total {report['total_seconds'] / 60:.1f} min)",
        f"- CPU: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gb')} GB memory",
        f"- Python {m.get('python')}, TensorFlow {m.get('tensorflow', '—')}, devices: "
        f"{', '.join(m.get('devices', [])) or '—'}"
        + (f", AVX512-BF16: {'yes' if m['avx512_bf16'] else 'no'}" if "avx512_bf16" in m else ""),
        f"- load average at start: {report.get('load_average_start', '—')}",
        "",
        "| benchmark | status | seconds | sizes | command |",
        "|---|---|---|---|---|",
    ]
    for name, r in report["benchmarks"].items():
        parts.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {r['note']} | `{r['command']}` |")
    parts += ["", "## Figures against targets", "", markdown_table(rows), ""]
    failed = [r for r in report["benchmarks"].values() if r["status"] != "ok"]
    if failed:
        parts += ["## Failures", ""]
        for r in failed:
            parts += [f"### {r['name']}", "", "```", *r["output_tail"][-15:], "```", ""]
    text = "\n".join(parts)
    with open(path, "w") as f:
        f.write(text)
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (about 20 minutes)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--xla", action="store_true", help="also measure XLA-on training steps (slow on CPU)")
    parser.add_argument("--out-md", default=os.path.join(HERE, "RESULTS.md"))
    parser.add_argument("--out-json", default=os.path.join(HERE, "results.json"))
    parser.add_argument("--render", metavar="RESULTS_JSON",
                        help="run nothing: rebuild the table and --out-md from a results.json of an earlier run")
    args = parser.parse_args(argv)
    if args.render:
        with open(args.render) as f:
            report = json.load(f)
        rows = table_rows(report["benchmarks"])
        write_markdown(args.out_md, report, rows)
        print(markdown_table(rows))
        return 0
    names = list(NAMES)
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in NAMES]
        if unknown:
            parser.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(NAMES)}")
    started = time.time()
    machine = machine_info()
    try:
        with open("/proc/cpuinfo") as f:
            machine["avx512_bf16"] = "avx512_bf16" in f.read()
    except OSError:
        pass
    report = {"mode": "quick" if args.quick else "default", "xla": args.xla,
              "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "argv": sys.argv[1:], "machine": machine,
              "load_average_start": " ".join(f"{x:.2f}" for x in os.getloadavg()), "benchmarks": {}}
    print("machine:", json.dumps(machine))
    print(f"mode: {report['mode']}; benchmarks: {', '.join(names)}; load average {report['load_average_start']}")
    with tempfile.TemporaryDirectory(prefix="kdem_bench_") as tmp:
        for name in names:
            report["benchmarks"][name] = run_benchmark(name, plan(name, args.quick, args.xla), tmp)
    report["total_seconds"] = round(time.time() - started, 1)
    rows = table_rows(report["benchmarks"])
    report["table"] = rows
    with open(args.out_json, "w") as f:
        json.dump(report, f, indent=2, default=str)
    write_markdown(args.out_md, report, rows)
    print("\n" + markdown_table(rows))
    print(f"\ntotal {report['total_seconds'] / 60:.1f} min; wrote {os.path.relpath(args.out_md)} and "
          f"{os.path.relpath(args.out_json)}")
    return 0 if all(r["status"] == "ok" for r in report["benchmarks"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
