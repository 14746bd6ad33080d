"""Renders the comparison chart: requests per proxy CPU-second per scenario (median, with the
min-max spread as error bars), one bar per configuration.

Usage: chart.py results.json chart.png   (run by `outrigger-benches compare`)
"""

import json
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

results = json.load(open(sys.argv[1]))
samples = [s for s in results["samples"] if s["per_cpu_s"] > 0]
scenarios = []
for s in samples:
    if s["title"] not in scenarios and s["scenario"] != "fixed_2000rps":
        scenarios.append(s["title"])
configs = []
for s in samples:
    if s["config"] not in configs:
        configs.append(s["config"])
order = ["outrigger", "outrigger+log", "outrigger+otlp-down", "envoy", "envoy+log", "haproxy", "haproxy+log", "nginx", "nginx+log"]
configs = [c for c in order if c in configs]

fig, ax = plt.subplots(figsize=(12, 5.5))
width = 0.8 / max(len(configs), 1)
for i, config in enumerate(configs):
    medians, lo, hi = [], [], []
    for title in scenarios:
        xs = [s["per_cpu_s"] for s in samples if s["config"] == config and s["title"] == title]
        if xs:
            m = statistics.median(xs)
            medians.append(m)
            lo.append(m - min(xs))
            hi.append(max(xs) - m)
        else:
            medians.append(0)
            lo.append(0)
            hi.append(0)
    xs = [j + i * width for j in range(len(scenarios))]
    ax.bar(xs, medians, width, yerr=[lo, hi], label=config, capsize=2)
ax.set_xticks([j + width * (len(configs) - 1) / 2 for j in range(len(scenarios))])
ax.set_xticklabels(scenarios)
ax.set_ylabel("requests per CPU-second of the proxy")
ax.set_title("Efficiency on one core (higher is better); bars: median, whiskers: min-max over rounds")
ax.legend(ncol=3, fontsize="small")
ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=110)
