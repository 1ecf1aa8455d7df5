"""The suite's PNG: throughput per workload per system, and W3 latency percentiles."""

from __future__ import annotations

import os

from tidemq.bench.peers_report import THROUGHPUT_WORKLOADS, Results, system


def plot(results: Results, path: str, *, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results.systems()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(13, 9))
    width = 0.8 / max(1, len(systems))
    workloads = [w for w in THROUGHPUT_WORKLOADS
                 if any(results.get(s, w) for s in systems)]
    for index, key in enumerate(systems):
        values = [(r.msg_per_s if (r := results.get(key, w)) else 0) for w in workloads]
        positions = [n + (index - (len(systems) - 1) / 2) * width
                     for n in range(len(workloads))]
        bars = top.bar(positions, values, width, label=system(key).label)
        top.bar_label(bars, labels=[f"{v / 1000:.0f}k" if v else "" for v in values],
                      fontsize=6, rotation=90, padding=2)
    top.set_xticks(range(len(workloads)), workloads)
    top.set_yscale("log")
    highest = max((r.msg_per_s for s in systems for w in workloads
                   if (r := results.get(s, w))), default=1.0)
    top.set_ylim(top=highest * 12)  # room for the legend above the bars
    top.set_ylabel("messages/s (log scale)")
    top.set_title("Throughput (W1, W2, W5, W6; -batch: TideMQ send_batch)")
    top.legend(fontsize=7, ncol=4, loc="upper center")
    top.grid(axis="y", alpha=0.3)

    latency_systems = [s for s in systems if results.get(s, "W3")]
    labels = ("p50", "p99", "p99.9")
    bar = 0.8 / len(labels)
    for index, label in enumerate(labels):
        values = []
        for key in latency_systems:
            w3 = results.get(key, "W3")
            assert w3 is not None
            value = {"p50": w3.p50_ms, "p99": w3.p99_ms, "p99.9": w3.p999_ms}[label]
            values.append(value or 0)
        positions = [n + (index - 1) * bar for n in range(len(latency_systems))]
        bars = bottom.bar(positions, values, bar, label=label)
        bottom.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=6, padding=2)
    bottom.set_xticks(range(len(latency_systems)),
                      [system(s).label.replace(", ", "\n", 1) for s in latency_systems],
                      fontsize=7)
    bottom.set_yscale("log")
    bottom.set_ylabel("ms (log scale)")
    rate = next((r.rate_per_s for s in latency_systems if (r := results.get(s, "W3"))), None)
    bottom.set_title(f"W3 end-to-end latency at {rate} msg/s")
    bottom.set_ylim(top=max((v for s in latency_systems
                             if (r := results.get(s, "W3")) and (v := r.p999_ms)),
                            default=1.0) * 4)
    bottom.legend(fontsize=7, ncol=3, loc="upper center")
    bottom.grid(axis="y", alpha=0.3)
    figure.suptitle(title)
    figure.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
