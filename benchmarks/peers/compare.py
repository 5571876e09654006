#!/usr/bin/env python3
"""Pairs the JSON lines of bench_step ("impl": "zotorch") and peers/bench_step.py ("impl": "peer",
the tidied peers, and "impl": "peer-release", MeZO and FZOO exactly as released) measured in one
run of benchmarks/compare.sh, and prints the ratios ours / peer per method and model size as a
Markdown table, against both peers where both ran; optionally writes the table to a file and plots
overhead against model size (PNG, needs matplotlib).

  compare.py RESULTS.jsonl [--markdown TABLE.md] [--plot OVERHEAD.png] [--title TEXT]"""
import argparse
import json
import sys


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line.startswith("{"):
                rows.append(json.loads(line))
    return rows


def limit(r):
    """The overhead against its memory-bound floor: one in-place read-modify-write pass over all
    parameters (ATen's p.mul_(1), measured in the same process) per sweep the step makes."""
    if not r.get("sweeps_per_step"):
        return "–"
    return f"{r['overhead_ms'] / (r['sweeps_per_step'] * r['rmw_pass_ms']):.1f}×"


def table(rows):
    key = lambda r: (r["device"], r["dtype"], r["size"], r["batch"], r["seq"], r["method"])  # noqa: E731
    ours = {key(r): r for r in rows if r["impl"] == "zotorch"}
    peers = {key(r): r for r in rows if r["impl"] == "peer"}
    releases = {key(r): r for r in rows if r["impl"] == "peer-release"}
    order = {"mezo": 0, "adamezo": 1, "fzoo": 2, "adam": 3}
    lines = [
        "| method | params | batch×seq | step ms ours / peer | closure ms ours / peer | overhead ms ours / peer "
        "| overhead ours/peer | overhead ours/peer, CPU time "
        "| overhead ours/release peer | overhead ours/release peer, CPU time | step ours/peer "
        "| peak ours/peer | ours: overhead % of step | ours: overhead ÷ (sweeps × one RMW pass) | ours: peak − inference peak "
        "| state bytes ours / peer | peer's ±1 draw |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    pairs = []
    for k in sorted(ours, key=lambda k: (ours[k]["params"], order.get(k[5], 9))):
        o, p, rel = ours[k], peers.get(k), releases.get(k)
        if p is None:
            continue
        pairs.append((o, p, rel))
        if rel is None:
            vs_release = "– | –"
        else:
            vs_release = (f"**{o['overhead_ms'] / rel['overhead_ms']:.3f}** "
                          f"| {o['overhead_cpu_ms'] / rel['overhead_cpu_ms']:.3f}")
        lines.append(
            f"| {o['method']} | {o['params'] / 1e6:.1f}M | {o['batch']}×{o['seq']} "
            f"| {o['step_ms']:.1f} / {p['step_ms']:.1f} | {o['closure_ms']:.1f} / {p['closure_ms']:.1f} "
            f"| {o['overhead_ms']:.2f} / {p['overhead_ms']:.2f} "
            f"| **{o['overhead_ms'] / p['overhead_ms']:.3f}** | {o['overhead_cpu_ms'] / p['overhead_cpu_ms']:.3f} "
            f"| {vs_release} | {o['step_ms'] / p['step_ms']:.3f} "
            f"| {o['peak_bytes'] / p['peak_bytes']:.3f} | {100 * o['overhead_fraction']:.1f}% "
            f"| {limit(o)} | {o['peak_bytes'] - o['inference_peak_bytes']:+,} B "
            f"| {o['optimizer_state_bytes']} / {p['optimizer_state_bytes']} | {p.get('rademacher', '–')} |")
    lines.append("")
    lines.append("peer: the tidied peers (in place; FZOO's ±1 draw the fastest ATen draw measured when the peer "
                 "starts, named in the last column); release peer: MeZO and FZOO operation for operation as "
                 "their released trainers (out of place; FZOO's torch.randint(0, 2) * 2 - 1).")
    return "\n".join(lines), pairs


def plot(pairs, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # Wall clock is what a user waits; process CPU time is what the step costs, whatever else runs.
    panels = [("overhead_ms", "wall clock"), ("overhead_cpu_ms", "process CPU time")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    colors = {"mezo": "tab:blue", "adamezo": "tab:green", "fzoo": "tab:red", "adam": "tab:gray"}
    for ax, (field, label) in zip(axes, panels):
        for method in ("mezo", "adamezo", "fzoo", "adam"):
            sel = sorted([t for t in pairs if t[0]["method"] == method], key=lambda t: t[0]["params"])
            if not sel:
                continue
            x = [o["params"] for o, _, _ in sel]
            ax.plot(x, [o[field] for o, _, _ in sel], "o-", color=colors[method], label=f"{method} zotorch")
            ax.plot(x, [p[field] for _, p, _ in sel], "s--", color=colors[method], alpha=0.6, label=f"{method} peer")
            rel = [(o["params"], r[field]) for o, _, r in sel if r is not None]
            if rel:
                ax.plot([r[0] for r in rel], [r[1] for r in rel], "^:", color=colors[method], alpha=0.6,
                        label=f"{method} release peer")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_title(f"overhead = step − closure, {label}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("optimizer overhead per step (ms)")
    axes[1].legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results")
    ap.add_argument("--markdown")
    ap.add_argument("--plot")
    ap.add_argument("--title", default="zotorch vs reference-style Python steps")
    a = ap.parse_args()
    text, pairs = table(load(a.results))
    if not pairs:
        sys.exit(f"compare.py: {a.results} has no pair of zotorch and peer results with the same settings")
    print(text)
    if a.markdown:
        with open(a.markdown, "w") as f:
            f.write(text + "\n")
    if a.plot:
        plot(pairs, a.plot, a.title)


if __name__ == "__main__":
    main()
