#!/usr/bin/env python3
"""The Python side of benchmarks/bench_step: the reference-style MeZO, AdaMeZO and FZOO steps of
reference_steps.py (and torch.optim.Adam with backprop) on the same Llama model, weights, batch and
measurement as the C++ benchmark, printing the same JSON fields with "impl": "peer" (the tidied
peers) or "impl": "peer-release" (MeZO and FZOO exactly as their released trainers step,
--peers tidied,release).

  .venv/bin/python benchmarks/peers/bench_step.py --size small --batch 2 --seq 64 \
      --weights /tmp/small.safetensors        # the file bench_step wrote (or writes it if absent)

Timing: step_ms is the wall time of one step() between two device synchronisations; closure_ms
the time inside the closure, which synchronises before and after the forward (on CUDA the host
time is then the device time); overhead = step - closure. Medians over --steps measured steps."""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from llama import PRESETS, LlamaForCausalLM, lm_loss, load_weights, save_weights, token_batch  # noqa: E402
from memory import MemoryMeter  # noqa: E402
from reference_steps import AdaMeZOPeer, FZOOPeer, FZOOReleasePeer, MeZOPeer, MeZOReleasePeer  # noqa: E402

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default="float32")
    # Defaults as bench_step's: cpu tiny 2 x 64, cuda smollm2-135m 16 x 128.
    ap.add_argument("--size", choices=list(PRESETS))
    ap.add_argument("--batch", type=int)
    ap.add_argument("--seq", type=int)
    ap.add_argument("--methods", default="mezo,adamezo,fzoo,adam")
    ap.add_argument("--peers", default="tidied,release",
                    help="tidied: the peers in their cheapest form; release: also MeZO and FZOO exactly as released")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--window", type=int, default=10)
    ap.add_argument("--num-perturbations", type=int, default=8)
    ap.add_argument("--weights", default="")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--smoke", action="store_true", help="tiny model, one step of each method, nothing measured")
    a = ap.parse_args()
    a.methods = [m for m in a.methods.split(",") if m]
    a.peers = [v for v in a.peers.split(",") if v]
    for v in a.peers:
        if v not in ("tidied", "release"):
            ap.error(f"--peers takes tidied, release; got '{v}'")
    for m in a.methods:
        if m not in ("mezo", "adamezo", "fzoo", "adam"):
            ap.error(f"--methods takes mezo, adamezo, fzoo, adam; got '{m}'")
    cuda = a.device == "cuda"
    a.size = a.size or ("smollm2-135m" if cuda else "tiny")
    a.batch = a.batch or (16 if cuda else 2)
    a.seq = a.seq or (128 if cuda else 64)
    if a.smoke:
        a.size, a.batch, a.seq, a.steps, a.warmup, a.window, a.weights = "tiny", 1, 16, 1, 0, 2, ""
    return a


def main():
    a = parse()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    device = torch.device("cuda:0" if a.device == "cuda" else "cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("peers/bench_step.py: --device cuda, but torch sees no CUDA device")
    meter = MemoryMeter(device)  # before the model exists, so that all its tensors are counted

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    model = LlamaForCausalLM(a.size)
    if a.weights and os.path.exists(a.weights):
        load_weights(model, a.weights)
    else:
        model.init_weights(a.seed)
        if a.weights:
            save_weights(model, a.weights)
    model.to(device=device, dtype=DTYPES[a.dtype]).eval()
    params = sum(p.numel() for p in model.parameters())
    ids = token_batch(a.batch, a.seq, model.config["vocab_size"], device)

    timer = {"closure": 0.0, "closure_cpu": 0.0}

    def forward_loss():
        return lm_loss(model(ids), ids)

    def zo_closure():
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.inference_mode():  # the release evaluates the loss under inference_mode
            loss = forward_loss()
        sync()
        timer["closure_cpu"] += time.process_time() - cpu_start
        timer["closure"] += time.perf_counter() - start
        return loss

    def adam_closure():
        sync()
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = forward_loss()
        loss.backward()
        sync()
        timer["closure_cpu"] += time.process_time() - cpu_start
        timer["closure"] += time.perf_counter() - start
        return loss.detach()

    forward_s, inference_peak = [], 0
    with torch.no_grad():
        for _ in range(max(2, a.warmup + 1)):
            sync()
            meter.reset_peak()
            start = time.perf_counter()
            forward_loss()
            sync()
            forward_s.append(time.perf_counter() - start)
            inference_peak = max(inference_peak, meter.peak())
    pass_s = []
    with torch.no_grad():
        for _ in range(5):
            sync()
            start = time.perf_counter()
            for p in model.parameters():
                p.mul_(1.0)
            sync()
            pass_s.append(time.perf_counter() - start)
    rmw_pass_ms = 1e3 * statistics.median(pass_s)

    runs = []  # (method, variant): the release-faithful variant exists for MeZO and FZOO
    for method in a.methods:
        if "tidied" in a.peers or method not in ("mezo", "fzoo"):
            runs.append((method, "tidied"))
        if "release" in a.peers and method in ("mezo", "fzoo"):
            runs.append((method, "release"))
    rows = []
    for method, variant in runs:
        live_before = meter.current()
        named = list(model.named_parameters())
        rademacher = {}
        if method == "mezo" and variant == "release":
            opt = MeZOReleasePeer(named, lr=1e-6, eps=1e-3, seed=a.seed)
        elif method == "mezo":
            opt = MeZOPeer(named, lr=1e-6, eps=1e-3, seed=a.seed)
        elif method == "adamezo":
            opt = AdaMeZOPeer(named, lr=1e-7, eps=1e-3, window=a.window, seed=a.seed)
        elif method == "fzoo" and variant == "release":
            opt = FZOOReleasePeer(named, lr=1e-5, eps=1e-3, num_perturbations=a.num_perturbations, seed=a.seed)
            rademacher = dict(rademacher="randint_out_of_place")
        elif method == "fzoo":
            opt = FZOOPeer(named, lr=1e-5, eps=1e-3, num_perturbations=a.num_perturbations, seed=a.seed)
            rademacher = dict(rademacher=opt.rademacher, rademacher_candidates_ms=opt.rademacher_ms)
        else:
            opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        backprop = method == "adam"

        def step(closure=None):
            if backprop:
                def full():
                    opt.zero_grad()
                    return adam_closure()
                opt.step(full)
            else:
                opt.step(closure or zo_closure)

        for _ in range(a.warmup):
            step()
        if method == "adamezo":
            # Fill the window with a closure that costs nothing, as bench_step does, so that the
            # measured steps are adaptive ones (the first window + 1 steps are plain MeZO).
            calls = [0]

            def cheap():
                calls[0] += 1
                return torch.tensor(1.0 + 1e-3 * ((calls[0] * 7919) % 13), dtype=torch.float64)
            for _ in range(a.warmup, a.window + 1):
                step(cheap)
        step_s, closure_s, overhead_s, peak = [], [], [], 0
        step_cpu_s, closure_cpu_s, overhead_cpu_s = [], [], []
        for _ in range(a.steps):
            timer["closure"] = timer["closure_cpu"] = 0.0
            sync()
            meter.reset_peak()
            start, cpu_start = time.perf_counter(), time.process_time()
            step()
            sync()
            cpu_total = time.process_time() - cpu_start
            total = time.perf_counter() - start
            step_cpu_s.append(cpu_total)
            closure_cpu_s.append(timer["closure_cpu"])
            overhead_cpu_s.append(cpu_total - timer["closure_cpu"])
            step_s.append(total)
            closure_s.append(timer["closure"])
            overhead_s.append(total - timer["closure"])
            peak = max(peak, meter.peak())
        if backprop:
            state = sum(t.numel() * t.element_size() for s in opt.state.values() for t in s.values()
                        if torch.is_tensor(t))
            forward_passes, sweeps = 1, 0
        else:
            state = opt.state_bytes()
            forward_passes = a.num_perturbations + 1 if method == "fzoo" else 2
            sweeps = opt.sweeps_per_step
        retained = meter.current() - live_before
        if backprop:
            opt.zero_grad(set_to_none=True)
        del opt
        step_ms, closure_ms = 1e3 * statistics.median(step_s), 1e3 * statistics.median(closure_s)
        overhead_ms = 1e3 * statistics.median(overhead_s)
        row = dict(impl="peer-release" if variant == "release" else "peer", variant=variant, device=a.device, dtype=a.dtype, method=method, size=a.size, params=params,
                   batch=a.batch, seq=a.seq, threads=torch.get_num_threads(), steps=a.steps,
                   step_ms=round(step_ms, 4), closure_ms=round(closure_ms, 4), overhead_ms=round(overhead_ms, 4),
                   overhead_fraction=round(overhead_ms / step_ms, 5), forward_passes_per_step=forward_passes,
                   sweeps_per_step=sweeps, forward_ms=round(1e3 * statistics.median(forward_s), 4),
                   rmw_pass_ms=round(rmw_pass_ms, 4), peak_bytes=peak, inference_peak_bytes=inference_peak,
                   optimizer_state_bytes=state, retained_bytes=retained, skipped_steps=0,
                   step_cpu_ms=round(1e3 * statistics.median(step_cpu_s), 4),
                   closure_cpu_ms=round(1e3 * statistics.median(closure_cpu_s), 4),
                   overhead_cpu_ms=round(1e3 * statistics.median(overhead_cpu_s), 4), memory=meter.method,
                   **rademacher)
        print(json.dumps(row), flush=True)
        rows.append(row)

    print(f"\npeers/bench_step.py: {a.device} {a.dtype}, {a.size} Llama ({params} params), batch {a.batch} x "
          f"{a.seq} tokens, {torch.get_num_threads()} threads, median of {a.steps} steps", file=sys.stderr)
    print(f"{'method':8} {'variant':8} {'step ms':>10} {'closure':>10} {'overhead':>10} {'ovh %':>7} {'ovh cpu ms':>10} {'FP':>4} {'swp':>4} "
          f"{'peak MiB':>11} {'infer MiB':>11} {'state B':>11}", file=sys.stderr)
    for r in rows:
        print(f"{r['method']:8} {r['variant']:8} {r['step_ms']:10.2f} {r['closure_ms']:10.2f} {r['overhead_ms']:10.2f} "
              f"{100 * r['overhead_fraction']:7.2f} {r['overhead_cpu_ms']:10.2f} {r['forward_passes_per_step']:4} {r['sweeps_per_step']:4} "
              f"{r['peak_bytes'] / 2**20:11.2f} {r['inference_peak_bytes'] / 2**20:11.2f} "
              f"{r['optimizer_state_bytes']:11}", file=sys.stderr)
    print(f"(overhead = step - closure, wall clock; ovh cpu = the same in process CPU time; one in-place pass over the parameters takes {rmw_pass_ms:.3f} ms; "
          f"memory: {meter.method})", file=sys.stderr)


if __name__ == "__main__":
    main()
