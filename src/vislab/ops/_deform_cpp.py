"""The C++ sampling kernels of deformable convolution (``csrc/deform_conv_cpu.cpp``): built with the
machine's C++ compiler at first use, loaded with ctypes, run on pieces of output rows by torch's
OpenMP threads.

The source has no torch headers, so the build is one compiler call of a few seconds; the library is
cached under ``$VISLAB_KERNEL_DIR`` (default ``~/.cache/vislab/kernels``), named by a hash of the
source, the compiler and the CPU, and written atomically (several processes may build at once).
Without a compiler (or when the build fails) :func:`library` prints one notice line and returns
None, and the caller uses the PyTorch implementation. ``VISLAB_DEFORM_KERNEL=pytorch`` skips the
kernel without a notice (an explicit choice); ``VISLAB_DEFORM_KERNEL=cpp`` makes a failed build an
error instead of a notice.

Each entry point takes the pieces of its rows (:func:`pieces`) and runs them with a dynamic schedule on
``torch.get_num_threads()`` OpenMP threads (ctypes releases the GIL during the call). Built with
``-fopenmp``, the library's ``libgomp.so.1`` is the copy torch has loaded, so the kernels use torch's own
OpenMP threads like an ATen operator: no second pool whose threads compete with torch's spin-waiting
ones (measured in docs/deformable.md). A compiler without OpenMP builds the kernels without it, with a
notice: the pieces then run in turn on the calling thread. In a forked child the passes run on the calling
thread outside OpenMP (GNU OpenMP's pool does not survive a fork; a child that entered it hung in testing).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

SOURCE = Path(__file__).parent / "csrc" / "deform_conv_cpu.cpp"
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fPIC", "-shared", "-std=c++17"]
SERIAL_FLAGS = ["-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared", "-std=c++17"]  # no OpenMP runtime
_ABI_VERSION = 5

_lock = threading.Lock()
_state: dict = {"tried": False, "lib": None, "reason": None}


def _cpu_signature() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        flags = ""
    return f"{platform.machine()} {platform.processor()} {flags}"


def _cache_dir() -> Path:
    if os.environ.get("VISLAB_KERNEL_DIR"):
        return Path(os.environ["VISLAB_KERNEL_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "vislab" / "kernels"


def build() -> Path:
    """Compile the kernels (if not cached) and return the shared library's path; raises on failure. Without
    OpenMP in the compiler, builds them single-threaded after a notice line."""
    try:
        return _build(FLAGS)
    except RuntimeError as error:
        if str(error).startswith("no C++ compiler"):
            raise
        path = _build(SERIAL_FLAGS)  # raises when the compiler fails anyway
        print(f"vislab: the deformable-convolution kernel was built without OpenMP and runs on one thread "
              f"({str(error)[:200]})", file=sys.stderr, flush=True)
        return path


def _build(flags: list[str]) -> Path:
    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C++ compiler: {compiler!r} not found (set CXX)")
    source = SOURCE.read_bytes()
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, timeout=60).stdout
    key = hashlib.sha256(b"\0".join([source, " ".join(flags).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:16]
    directory = _cache_dir()
    path = directory / f"vislab_deform_cpu_{key}.so"
    if path.exists():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                              timeout=600)
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed: {(done.stderr or done.stdout).strip().splitlines()[:1]}")
        os.replace(tmp, path)  # atomic: a concurrent build writes the same file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _load(path: Path) -> ctypes.CDLL:
    lib = ctypes.CDLL(str(path))
    if lib.vislab_deform_abi_version() != _ABI_VERSION:
        raise RuntimeError(f"{path} is not version {_ABI_VERSION} of the kernels")
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    run = [p, i64, i64]  # every entry point ends with (bounds, pieces, threads)
    for suffix in ("f32", "f64"):
        getattr(lib, f"vislab_deform_im2col_{suffix}").argtypes = [p, p, p, p, p, *run]
        getattr(lib, f"vislab_deform_col2im_{suffix}").argtypes = [p, p, p, p, p, i64, i64, p, p, p, *run]
        getattr(lib, f"vislab_deform_pad_{suffix}").argtypes = [p, p, p, p, *run]
        getattr(lib, f"vislab_deform_unpad_{suffix}").argtypes = [p, i64, i64, p, p, *run]
        getattr(lib, f"vislab_deform_fused_forward_{suffix}").argtypes = [p, p, p, p, p, p, i64, *run]
        getattr(lib, f"vislab_deform_fused_backward_{suffix}").argtypes = [p, p, p, p, p, p, i64, i64, p, p, p, i64,
                                                                             p, i64, *run]
    return lib


def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (the PyTorch path) after one notice line on stderr."""
    if _state["tried"]:
        return _state["lib"]
    with _lock:
        if not _state["tried"]:
            choice = os.environ.get("VISLAB_DEFORM_KERNEL", "auto").lower()
            if choice not in ("auto", "cpp", "pytorch"):
                raise ValueError(f"VISLAB_DEFORM_KERNEL must be auto, cpp or pytorch, got {choice!r}")
            if choice == "pytorch":
                _state["reason"] = "VISLAB_DEFORM_KERNEL=pytorch"
            else:
                try:
                    _state["lib"] = _load(build())
                except Exception as error:  # noqa: BLE001 - any failure means: no kernel, say so
                    if choice == "cpp":
                        raise
                    _state["reason"] = f"{type(error).__name__}: {error}".splitlines()[0]
                    print(f"vislab: deformable convolution uses its PyTorch implementation (slower): the C++ "
                          f"kernel could not be built ({_state['reason']})", file=sys.stderr, flush=True)
            _state["tried"] = True
    return _state["lib"]


def reason() -> str | None:
    """Why :func:`library` returned None (None when the kernel is loaded or not tried yet)."""
    return _state["reason"]


def _reset_for_tests() -> None:
    with _lock:
        _state.update(tried=False, lib=None, reason=None)


# threads of the kernels' passes; None: torch.get_num_threads()
WORKERS: int | None = None


def row_ranges(rows: int) -> list[tuple[int, int]]:
    """``[0, rows)`` split into one nearly equal range per worker (fewer for few rows)."""
    parts = max(1, min(WORKERS or torch.get_num_threads(), rows))
    return [(rows * t // parts, rows * (t + 1) // parts) for t in range(parts)]


def piece_bounds(rows: int, pieces_per_worker: int = 4) -> list[int]:
    """The boundaries of the pieces a pass splits ``[0, rows)`` into (the same for every call with
    the same ``rows`` and thread count: a caller can keep one partial result per piece, summed in piece
    order, so that the dynamic scheduling never changes a floating-point result)."""
    pieces = max(1, min(rows, len(row_ranges(rows)) * pieces_per_worker))
    return [rows * i // pieces for i in range(pieces + 1)]


def scatter_pieces(images: int, rows_per_image: int) -> tuple[list[int], bool]:
    """How a pass that scatters into its input's gradient splits ``images × rows_per_image`` output rows so
    that the result never depends on the scheduling: ``(bounds, shared)``. An output row samples only its
    own image, so pieces of different images never write the same values.

    * ``shared`` (at least two images per worker): pieces of whole images (up to four per worker),
      written into one shared gradient buffer, each image in row order by one worker: the same bits
      whichever worker takes which piece.
    * otherwise about two pieces per worker, each within one image, each with a buffer of its own (one
      image's size: two per worker bound the memory at N = 1); the caller sums each image's pieces in piece
      order.
    """
    rows = images * rows_per_image
    few = len(piece_bounds(rows, pieces_per_worker=2)) - 1
    if images >= few:  # whole images, up to the usual four pieces per worker
        pieces = min(images, len(piece_bounds(rows)) - 1)
        return [rows_per_image * (images * j // pieces) for j in range(pieces + 1)], True
    k = min(rows_per_image, -(-few // images))  # pieces per image
    return [i * rows_per_image + rows_per_image * j // k for i in range(images) for j in range(k)] + [rows], False


_forked = {"child": False}


def _after_fork_in_child() -> None:
    _forked["child"] = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def threads() -> int:
    """The OpenMP threads of the kernels' passes: ``WORKERS`` or ``torch.get_num_threads()``; 1 in a forked
    child (GNU OpenMP's pool does not survive a fork: the passes then enter no OpenMP construct at all)."""
    if _forked["child"]:
        return 1
    return max(1, WORKERS or torch.get_num_threads())


def pieces(bounds: list[int]) -> tuple[torch.Tensor, int]:
    """``(bounds as an int64 tensor, number of pieces)``: the pieces argument of the entry points (keep the
    tensor alive during the call)."""
    return torch.tensor(bounds, dtype=torch.int64), len(bounds) - 1
