"""A clean console for every entry point: our progress and results on screen, library noise in a log file.

Started by the packages' `__init__` when Python runs one of their modules with `-m`
(`python -m kdem_tf.train`, `python -m serving.server`, `python -m pipeline.demo`,
`python -m benchmarks.run_all`, ...), before TensorFlow is imported, so that its C++
start-up lines are caught too. How:

- file descriptor 2 (stderr) of the process, and so of every child it starts (Beam's
  worker processes, TFX's subprocesses), becomes a pipe read by a thread;
- every byte goes to the log file; a line goes on to the real stderr unless it is
  library noise (`is_noise`): TensorFlow/TSL/absl/gRPC C++ log lines, absl/Beam/TFX
  Python log records below ERROR, Python warnings raised inside installed packages
  (the Google client libraries' Python 3.10 FutureWarnings), Beam's
  `No module named build` probe;
- our own warnings (raised from this repository's code), errors, tracebacks and
  progress bars (lines redrawn with `\\r`) pass unchanged.

The log goes to a temporary file first and moves beside the run's outputs once the
entry point knows where they are (`log_beside`). When the process ends with a traceback,
one line names the log file (a one-line `error: ...` exit stays one line). `--verbose` on any entry point (taken off the command
line here) or `KDEM_VERBOSE=1` turns all of this off: everything is shown as is.
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import tempfile
import threading
from typing import Optional

ENV_VERBOSE = "KDEM_VERBOSE"

_NOISE = re.compile("|".join([
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWE] ",             # TensorFlow / TSL / XLA C++ logging
    r"^[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ \S+:\d+\] ",             # absl C++ / gRPC core, absl Python handler
    r"^WARNING: All log messages before absl::InitializeLog",
    r"^To enable the following instructions: ",                  # cpu_feature_guard's second line
    r"^(DEBUG|INFO|WARNING):(absl|apache_beam|tensorflow|tfx|ml_metadata|root|h5py|matplotlib|urllib3|"
    r"google|grpc|py\.warnings|jax)\b",                          # library Python logging below ERROR
    r"^.*/(site|dist)-packages/.*:\d+: \w*Warning: ",             # a Python warning raised inside a library
    r"^\s+(warnings\.warn|warn)\(",                             # ... and the source line printed under it
    r"^(/\S*/)?python[\d.]*: No module named build\s*$",          # Beam's stager probing for `python -m build`
    r"^fully_quantize: \d+, inference_type: \d+",              # the TFLite calibrator's C++ printf
    r"^INFO: Created TensorFlow Lite XNNPACK delegate",            # the TFLite interpreter's first line
]))


def is_noise(line: str) -> bool:
    """True for one line of library noise (see the module docstring)."""
    return bool(_NOISE.match(line))


class OneLineRecords(logging.Formatter):
    """Python logging's basic format (`LEVEL:logger:message`), with every further line of a record below
    ERROR carrying the same prefix: TFX logs whole protos (the pipeline IR, executor specs) in one INFO
    record, and its continuation lines would otherwise reach the console on their own (`is_noise` judges
    a line, not a record). Errors keep their lines as they are: they are shown."""

    def __init__(self):
        super().__init__(logging.BASIC_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if record.levelno >= logging.ERROR or "\n" not in text:
            return text
        prefix = f"{record.levelname}:{record.name}:"
        first, *rest = text.split("\n")
        return "\n".join([first] + [f"{prefix} {line}" for line in rest])


def _log_records_one_line() -> None:
    """Gives the root logger the handler `logging.basicConfig()` would (stderr, the basic format) with
    OneLineRecords, so that a library's later basicConfig() (Beam's, at import) finds it there and adds none."""
    root = logging.getLogger()
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(OneLineRecords())
        root.addHandler(handler)


class _Filter:
    """The pipe on fd 2, the pump thread and the log file."""

    def __init__(self, name: str):
        self.name = name
        self.lock = threading.Lock()
        self.console_fd = os.dup(2)
        fd, self.log_path = tempfile.mkstemp(prefix=f"kdem-{name}-", suffix=".log")
        self.log = os.fdopen(fd, "ab", buffering=0)
        self.noise_lines = 0
        self.moved = False
        read_fd, write_fd = os.pipe()
        self.read_fd = read_fd
        os.dup2(write_fd, 2)
        os.close(write_fd)
        self.thread = threading.Thread(target=self._pump, name="kdem-console", daemon=True)
        self.thread.start()

    def _forward(self, data: bytes) -> None:
        text = data.decode("utf-8", "replace")
        if is_noise(text.lstrip("\r")):
            self.noise_lines += 1
            return
        try:
            os.write(self.console_fd, data)
        except OSError:
            pass

    def _pump(self) -> None:
        pending = b""
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            with self.lock:
                try:
                    self.log.write(chunk)
                except OSError:
                    pass
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                self._forward(line + b"\n")
            if pending and (b"\r" in pending or len(pending) > 8192):
                self._forward(pending)   # a progress bar redrawn in place: show it now
                pending = b""
        if pending:
            self._forward(pending)

    def move_log(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with self.lock:
            new = open(path, "ab", buffering=0)
            with open(self.log_path, "rb") as old:
                new.write(old.read())
            self.log.close()
            try:
                os.remove(self.log_path)
            except OSError:
                pass
            self.log, self.log_path = new, path

    def stop(self, failed: bool) -> None:
        try:
            sys.stderr.flush()
        except Exception:
            pass
        os.dup2(self.console_fd, 2)   # closes our end of the pipe; the pump drains and ends
        self.thread.join(timeout=5)
        if failed and self.noise_lines:
            os.write(self.console_fd, f"(library messages of this run: {self.log_path})\n".encode())


_active: Optional[_Filter] = None


def verbose_requested() -> bool:
    return os.environ.get(ENV_VERBOSE, "").lower() in ("1", "true", "yes", "on")


def start(name: Optional[str] = None) -> None:
    """Starts the filter for this process (idempotent). `--verbose` in sys.argv is removed and disables it."""
    global _active
    if "--verbose" in sys.argv[1:]:
        sys.argv.remove("--verbose")
        os.environ[ENV_VERBOSE] = "1"
    if _active is not None or verbose_requested():
        return
    name = name or "kdem"
    try:
        _active = _Filter(name)
    except OSError:
        return
    _log_records_one_line()
    _exit_code = {"failed": False}
    original_excepthook = sys.excepthook

    def excepthook(*info):
        _exit_code["failed"] = True
        original_excepthook(*info)

    sys.excepthook = excepthook  # a one-line `error: ...` exit adds nothing; a traceback names the log
    atexit.register(lambda: _active and _active.stop(_exit_code["failed"]))


def start_if_entry_point(package: str) -> None:
    """Called by a package's `__init__`: starts the filter when Python is locating a `-m` module
    of this package (sys.argv[0] is "-m" only then)."""
    if sys.argv and sys.argv[0] == "-m":
        argv = list(getattr(sys, "orig_argv", []))
        module = argv[argv.index("-m") + 1] if "-m" in argv[:-1] else package
        start(module)


def log_beside(path: str) -> Optional[str]:
    """Moves this run's library log to `path` (e.g. RUN_DIR/console.log); returns the log's path.

    Only the first call moves it (the outermost entry point knows the run's outputs: `make demo`
    calling `kdem_tf.evaluate` in-process keeps the demo's log where the demo put it)."""
    if _active is None:
        return None
    if not _active.moved:
        _active.move_log(path)
        _active.moved = True
    return _active.log_path


def log_path() -> Optional[str]:
    return _active.log_path if _active else None
