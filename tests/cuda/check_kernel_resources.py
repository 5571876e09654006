#!/usr/bin/env python3
"""ctest entry cuda_kernels_resource_budget: registers, stack (spills), shared memory of every
sweep kernel for every architecture compiled into the kernels' object file, as a table, against the
budgets of docs/cuda.md "Occupancy" and the targets beside them. Needs cuobjdump, no GPU.

    check_kernel_resources.py [--cuobjdump PATH] OBJECT...

Fails when a kernel uses more registers than its budget, has a stack frame or local memory (a
spill), or when the object holds no sweep kernel at all.
"""
import argparse
import re
import subprocess
import sys

# docs/cuda.md "Occupancy". TARGETS: the registers per thread each kernel must fit (65536 registers
# per SM / 256 threads per block: 64 = 4 resident blocks, 96 = 2 with room, 128 = 2). BUDGETS, which
# the test enforces: the targets for the 32- and 16-bit kernels, which reach them without a spill
# since a warp sweeps its tile in passes of 8 elements per lane and Rademacher sums a staged plan's
# restore terms in a run of their own (include/zotorch/detail/cuda_tile.cuh); fp64 kernels (two
# registers per element and per accumulator) have no target, and their budgets are the counts of
# 2026-12-02 (nvcc 13.0, sm_80 and sm_90) rounded up to a multiple of 8. The Rademacher linear
# kernels sit at 64 because __launch_bounds__ asks for 4 blocks per SM; what ptxas does to fit is
# checked by the zero-spill rule, so a change that needs more live values fails here as a spill.
TARGETS = {(storage, dist, adaptive): (64 if dist == "Rademacher" else 96) if not adaptive else 128
           for storage in ("float", "half", "bfloat16") for dist in ("Rademacher", "Gaussian")
           for adaptive in (False, True)}
TARGETS.update({("double", dist, adaptive): None for dist in ("Rademacher", "Gaussian") for adaptive in (False, True)})
BUDGETS = dict(TARGETS)
BUDGETS.update({
    ("double", "Rademacher", False): 96,
    ("double", "Gaussian", False): 112,
    ("double", "Rademacher", True): 192,
    ("double", "Gaussian", True): 152,
})
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
        target = TARGETS[(storage, dist, adaptive)] or "—"
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
