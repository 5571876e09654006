#!/usr/bin/env python3
"""Cross-checks the examples' safetensors writer with Python's `safetensors` package.

  safetensors_check.py READ WRITE   reads READ (written by safetensors_roundtrip) with `safetensors`
                                    and checks the reference tensors, then writes them to WRITE with
                                    `safetensors` for safetensors_roundtrip to check (when numpy,
                                    which safetensors.torch.save_file needs, is importable)
  safetensors_check.py --list FILE  prints "name dtype shape" of each tensor of FILE

Exits 77 (CTest's "skipped") when `safetensors` or `torch` is not importable. The reference tensors
are those of safetensors_roundtrip.cpp.
"""
import sys

try:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file
except ImportError as e:
    print("SKIPPED: %s (pip install safetensors into this Python to run the check)" % e)
    sys.exit(77)


def reference_tensors():
    real = ((torch.arange(24, dtype=torch.float64) - 7) * 0.37).reshape(2, 3, 4)
    whole = (torch.arange(24, dtype=torch.int64) - 7).reshape(4, 6)
    return {
        "f64": real,
        "f32": real.to(torch.float32),
        "f16": real.to(torch.float16),
        "bf16": real.to(torch.bfloat16),
        "i64": whole,
        "i32": whole.to(torch.int32),
        "i16": whole.to(torch.int16),
        "i8": whole.to(torch.int8),
        "u8": (torch.arange(24, dtype=torch.int64) * 10).to(torch.uint8),
        "bool": torch.arange(24, dtype=torch.int64).remainder(3).eq(0),
        "empty": torch.zeros(0, 3),
        "scalar": torch.tensor(2.5, dtype=torch.float32),
        "bert.encoder.layer.0.attention.self.query.lora_A": torch.arange(12, dtype=torch.float32).reshape(3, 4).t(),
    }


def read(path):
    with safe_open(path, framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata()


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--list":
        tensors, _ = read(sys.argv[2])
        for name, t in tensors.items():
            print(name, t.dtype, list(t.shape))
        return 0
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    tensors, metadata = read(sys.argv[1])
    expected = reference_tensors()
    problems = []
    if set(tensors) != set(expected):
        problems.append("names differ: %s" % sorted(set(tensors) ^ set(expected)))
    for name, want in expected.items():
        got = tensors.get(name)
        if got is not None and (got.dtype != want.dtype or got.shape != want.shape or not torch.equal(got, want)):
            problems.append("%s: %s %s differs from the expected %s %s" % (name, got.dtype, list(got.shape), want.dtype,
                                                                          list(want.shape)))
    if (metadata or {}).get("format") != "pt":
        problems.append("__metadata__ lacks format=pt: %r" % metadata)
    if problems:
        print("safetensors_check.py: %s:\n  %s" % (sys.argv[1], "\n  ".join(problems)), file=sys.stderr)
        return 1
    print("safetensors_check.py: safetensors %s read all %d tensors of %s bit-identical" % (
        __import__("safetensors").__version__, len(tensors), sys.argv[1]))
    try:
        save_file({k: v.contiguous() for k, v in expected.items()}, sys.argv[2], metadata={"format": "pt"})
    except ImportError as e:  # safetensors.torch.save_file converts through numpy, which torch does not need
        print("safetensors_check.py: not writing %s for the reverse check: %s" % (sys.argv[2], e))
    return 0


if __name__ == "__main__":
    sys.exit(main())
