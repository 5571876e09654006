#!/usr/bin/python3
"""Summarises a compare.sh directory: one finetune_classifier run per method (metrics.csv +
summary.json) and a zero-shot run. Prints a Markdown table (method, test accuracy, forward passes
to reach MeZO's final dev accuracy, wall time, peak memory), writes it to DIR/results.md and
DIR/results.json, and plots dev accuracy against forward passes to DIR/dev_accuracy.png.

"MeZO's final dev accuracy" is the dev accuracy of MeZO's best checkpoint within its budget (the
model MeZO would hand over); "forward passes to reach" is the first evaluation at which a method's
dev accuracy is at least that. Adam counts 3 forward-pass equivalents per step.
Usage: report.py DIR [--methods fzoo mezo adamezo adam] [--title T]
"""
import argparse
import csv
import json
import os
import sys


def load(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as f:
        summary = json.load(f)
    rows = []
    path = os.path.join(run_dir, "metrics.csv")
    if os.path.exists(path):
        with open(path) as f:
            rows = [{k: float(v) for k, v in r.items()} for r in csv.DictReader(f)]
    return summary, rows


def first_reaching(rows, threshold):
    for r in rows:
        if r["dev_accuracy"] >= threshold - 1e-6:  # metrics.csv holds 10 digits
            return int(r["forward_passes"])
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--methods", nargs="+", default=["fzoo", "mezo", "adamezo", "adam"])
    ap.add_argument("--title", default="")
    args = ap.parse_args()

    runs = {}
    for m in args.methods:
        if os.path.exists(os.path.join(args.dir, m, "summary.json")):
            runs[m] = load(os.path.join(args.dir, m))
    if not runs:
        sys.exit("report.py: no runs with summary.json under %s" % args.dir)
    zero_shot = load(os.path.join(args.dir, "zero-shot"))[0] if os.path.exists(
        os.path.join(args.dir, "zero-shot", "summary.json")) else None
    target = runs["mezo"][0]["dev_accuracy"] if "mezo" in runs else None

    names = {"fzoo": "FZOO", "mezo": "MeZO", "adamezo": "AdaMeZO", "adam": "Adam (backprop)"}
    lines = []
    if args.title:
        lines.append("**%s**\n" % args.title)
    lines.append("| method | test acc. | best dev acc. | forward passes | FP to reach MeZO's dev acc.%s | wall time | peak memory |"
                 % (" (%.1f%%)" % (100 * target) if target is not None else ""))
    lines.append("|---|---:|---:|---:|---:|---:|---:|")
    some = next(iter(runs.values()))[0]
    lines.append("| majority class | %.1f%% | | 0 | | | |" % (100 * some["majority_test_accuracy"]))
    if zero_shot:
        lines.append("| zero-shot (prompt head) | %.1f%% | %.1f%% | 0 | | %.0f s | %.0f MiB |" % (
            100 * zero_shot["test_accuracy"], 100 * zero_shot["dev_accuracy"], zero_shot["wall_seconds"],
            zero_shot["peak_bytes"] / 2**20))
    result = {"target_dev_accuracy": target, "methods": {}}
    for m, (s, rows) in runs.items():
        reach = first_reaching(rows, target) if target is not None else None
        reach_text = "—" if reach is None else str(reach)
        if reach is not None and m != "mezo" and "mezo" in runs:
            mezo_reach = first_reaching(runs["mezo"][1], target)
            if mezo_reach:
                reach_text += " (%.2f× MeZO's)" % (reach / mezo_reach)
        lines.append("| %s | %.1f%% | %.1f%% | %d | %s | %.0f s | %.0f MiB |" % (
            names.get(m, m), 100 * s["test_accuracy"], 100 * s["dev_accuracy"], s["forward_passes"], reach_text,
            s["wall_seconds"], s["peak_bytes"] / 2**20))
        result["methods"][m] = {"test_accuracy": s["test_accuracy"], "dev_accuracy": s["dev_accuracy"],
                                "forward_passes": s["forward_passes"], "forward_passes_to_reach_mezo": reach,
                                "wall_seconds": s["wall_seconds"], "peak_bytes": s["peak_bytes"], "lr": s["lr"],
                                "eps": s.get("eps")}
    lines.append("")
    lines.append("Forward passes: closure calls of the zeroth-order methods; Adam counts 3 per step (forward + "
                 "backward). Peak memory: the process's peak resident set on CPU, the allocator's peak on CUDA.")
    table = "\n".join(lines)
    print(table)
    with open(os.path.join(args.dir, "results.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.dir, "results.json"), "w") as f:
        json.dump(result, f, indent=1)

    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report.py: matplotlib is not installed; no plot (Debian: apt-get install python3-matplotlib)",
              file=sys.stderr)
        return
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    styles = {"fzoo": ("tab:red", "-"), "mezo": ("tab:blue", "-"), "adamezo": ("tab:green", "-"), "adam": ("black", "--")}
    for m, (s, rows) in runs.items():
        color, ls = styles.get(m, (None, "-"))
        ax.plot([r["forward_passes"] for r in rows], [100 * r["dev_accuracy"] for r in rows], ls, color=color,
                marker="o", markersize=3, label="%s (lr %g)" % (names.get(m, m), s["lr"]))
    if zero_shot:
        ax.axhline(100 * zero_shot["dev_accuracy"], color="gray", lw=0.8, ls=":", label="zero-shot")
    if target is not None:
        ax.axhline(100 * target, color="tab:blue", lw=0.8, ls="-.", label="MeZO's best dev accuracy")
    ax.set_xlabel("forward passes (Adam: 3 per step)")
    ax.set_ylabel("dev accuracy (%)")
    ax.set_title(args.title or "dev accuracy vs forward passes", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    png = os.path.join(args.dir, "dev_accuracy.png")
    fig.savefig(png)
    print("\nplot: %s\ntable: %s" % (png, os.path.join(args.dir, "results.md")))


if __name__ == "__main__":
    main()
