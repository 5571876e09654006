#!/usr/bin/env python3
"""ctest entry cuda_kernels_resource_budget: registers, stack (spills), shared memory of every
sweep kernel for every architecture compiled into the kernels' object file, as a table, against the
budgets of docs/cuda.md "Occupancy" (and the targets they miss). Needs cuobjdump, no GPU.

    check_kernel_resources.py [--cuobjdump PATH] OBJECT...

Fails when a kernel uses more registers than its budget, has a stack frame or local memory (a
spill), or when the object holds no sweep kernel at all.
"""
import argparse
import re
import subprocess
import sys

# docs/cuda.md "Occupancy". TARGETS: the registers per thread each kernel was meant to fit
# (65536 registers per SM / 256 threads per block: 64 = 4 resident blocks, 96 = 2 with room, 128 = 2).
# None of them is reachable without spills: __launch_bounds__(256, 4) gives the Rademacher linear
# kernels 200-290 bytes of spill stores, (256, 3) still 100-170, (256, 2) spills every adaptive kernel
# but fp32 Rademacher (measured with ptxas 13.0 on the kernels' PTX). So the kernels are left as they
# are, except that one (min_blocks_per_sm, include/zotorch/detail/cuda_sweep.cuh), and BUDGETS, which
# the test enforces, are the counts reached on sm_80 and sm_90 with nvcc 13.0.88, rounded up to a
# multiple of 8 (unrelated edits of the translation unit move them by up to 4), and never above 128
# where the count was: a change that needs more registers, or costs a linear kernel its second
# block per SM, fails here; one that reaches a target shows in the table. Re-measured 2026-12-01
# after stochastic rounding moved to 16-bit draws (docs/numerics.md): 16-bit linear kernels 113-122
# -> 107-116, 16-bit Rademacher adaptive 154-167 -> 162-166.
TARGETS = {(storage, dist, adaptive): (64 if dist == "Rademacher" else 96) if not adaptive else 128
           for storage in ("float", "half", "bfloat16") for dist in ("Rademacher", "Gaussian")
           for adaptive in (False, True)}
TARGETS.update({("double", dist, adaptive): 128 for dist in ("Rademacher", "Gaussian") for adaptive in (False, True)})
BUDGETS = {
    ("float", "Rademacher", False): 104,
    ("float", "Gaussian", False): 112,
    ("float", "Rademacher", True): 128,  # __launch_bounds__(256, 2): 2 blocks; 136-139 without
    ("float", "Gaussian", True): 152,
    ("half", "Rademacher", False): 112,
    ("half", "Gaussian", False): 120,
    ("half", "Rademacher", True): 168,
    ("half", "Gaussian", True): 160,
    ("bfloat16", "Rademacher", False): 112,
    ("bfloat16", "Gaussian", False): 120,
    ("bfloat16", "Rademacher", True): 168,  # 154-160 before the 16-bit rounding draws; 1 block either way
    ("bfloat16", "Gaussian", True): 160,
    # fp64 (two registers per element and per accumulator): stated, not targeted.
    ("double", "Rademacher", False): 160,
    ("double", "Gaussian", False): 168,
    ("double", "Rademacher", True): 232,
    ("double", "Gaussian", True): 240,
}
THREADS = 256  # kCudaThreads, include/zotorch/detail/cuda_sweep.cuh


def blocks_per_sm(registers):
    """Resident 256-thread blocks that 65536 registers allow (allocated per warp in units of 256)."""
    per_warp = -(-registers * 32 // 256) * 256
    return 65536 // (per_warp * (THREADS // 32))


STORAGE = {"Float32Storage": "float", "Float64Storage": "double", "Float16Storage": "half",
           "BFloat16Storage": "bfloat16"}
DISTRIBUTION = {"0": "Rademacher", "1": "Gaussian"}  # include/zotorch/distribution.h
KERNEL = re.compile(r"sweep_kernelINS0_\d+(\w+?Storage)ELNS_\d+DistributionE(\d)ELb([01])E")


def parse(text):
    """-> list of (arch, storage, distribution, adaptive, {REG, STACK, SHARED, LOCAL})."""
    rows, arch, name = [], None, None
    for line in text.splitlines():
        line = line.strip()
        m = re.match(r"arch = (sm_\w+)", line)
        if m:
            arch = m.group(1)
            continue
        m = re.match(r"Function (\S+):", line)
        if m:
            name = m.group(1)
            continue
        if name and line.startswith("REG:"):
            usage = {k: int(v) for k, v in re.findall(r"(\w+):(\d+)", line)}
            m = KERNEL.search(name)
            if m:
                rows.append((arch, STORAGE[m.group(1)], DISTRIBUTION[m.group(2)], m.group(3) == "1", usage))
            name = None
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuobjdump", default="cuobjdump")
    parser.add_argument("objects", nargs="+")
    args = parser.parse_args()
    rows = []
    for obj in args.objects:
        done = subprocess.run([args.cuobjdump, "--dump-resource-usage", obj], capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{args.cuobjdump} --dump-resource-usage {obj} failed:\n{done.stdout}{done.stderr}")
            return 1
        rows += parse(done.stdout)
    if not rows:
        print("no zotorch sweep kernel found in", " ".join(args.objects))
        return 1
    failures = []
    print("| arch | storage | distribution | plan | registers | blocks/SM | budget | target | stack (spills) | local | static shared |")
    print("| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for arch, storage, dist, adaptive, usage in sorted(rows, key=lambda r: (r[0], r[1], r[3], r[2])):
        budget = BUDGETS[(storage, dist, adaptive)]
        plan = "adaptive" if adaptive else "linear"
        reg, stack, local = usage.get("REG", -1), usage.get("STACK", 0), usage.get("LOCAL", 0)
        target = TARGETS[(storage, dist, adaptive)]
        print(f"| {arch} | {storage} | {dist} | {plan} | {reg} | {blocks_per_sm(reg)} | {budget} | {target} | {stack} "
              f"| {local} | {usage.get('SHARED', 0)} |")
        what = f"{arch} {storage} {dist} {plan}"
        if reg > budget:
            failures.append(f"{what}: {reg} registers > budget {budget}")
        if stack or local:
            failures.append(f"{what}: {stack} bytes of stack, {local} of local memory (spills)")
    print(f"{len(rows)} kernels; dynamic shared memory is set per launch (docs/cuda.md)")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
