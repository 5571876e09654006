"""Peak memory for the Python peers, measured the way bench_step measures it: on CPU the same
counting allocator (../counting_allocator.h, built here once as a small shared library and
installed as LibTorch's CPU allocator), on CUDA the caching allocator's allocated-bytes statistics."""
import ctypes
import hashlib
import os
import subprocess

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = [os.path.join(HERE, "counting_allocator.cpp"), os.path.join(HERE, "..", "counting_allocator.h")]


def _build_counting_library():
    digest = hashlib.sha256()
    for path in SOURCES:
        with open(path, "rb") as f:
            digest.update(f.read())
    digest.update(torch.__version__.encode())
    cache = os.environ.get("ZOTORCH_PEER_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "zotorch-peers")
    os.makedirs(cache, exist_ok=True)
    library = os.path.join(cache, f"libzotorch_counting_{digest.hexdigest()[:16]}.so")
    if not os.path.exists(library):
        torch_dir = os.path.dirname(torch.__file__)
        tmp = f"{library}.{os.getpid()}.tmp"
        command = [os.environ.get("CXX", "g++"), "-std=c++17", "-O2", "-shared", "-fPIC",
                   "-I", os.path.join(torch_dir, "include"), SOURCES[0],
                   "-L", os.path.join(torch_dir, "lib"), "-lc10", "-Wl,-rpath," + os.path.join(torch_dir, "lib"),
                   "-o", tmp]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError("building the counting allocator failed:\n" + " ".join(command) + "\n" + result.stderr)
        os.replace(tmp, library)
    lib = ctypes.CDLL(library)
    for name in ("zotorch_counting_current", "zotorch_counting_peak"):
        getattr(lib, name).restype = ctypes.c_int64
    return lib


class MemoryMeter:
    """current(), peak(), reset_peak() of the benchmark's device, in bytes."""

    def __init__(self, device):
        self.device = torch.device(device)
        if self.device.type == "cuda":
            self.method = "CUDA caching allocator"
            self._lib = None
        else:
            self.method = "counting CPU allocator"
            self._lib = _build_counting_library()
            self._lib.zotorch_counting_install()

    def current(self):
        if self._lib is None:
            return torch.cuda.memory_allocated(self.device)
        return self._lib.zotorch_counting_current()

    def peak(self):
        if self._lib is None:
            return torch.cuda.max_memory_allocated(self.device)
        return self._lib.zotorch_counting_peak()

    def reset_peak(self):
        if self._lib is None:
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._lib.zotorch_counting_reset_peak()
