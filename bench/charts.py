"""The plots beside bench/RESULTS.md, drawn with matplotlib (no display needed).

``draw_lines``: requests/s and p99 latency against clients, one line per case (dashed for
2 workers and more); the bars around each requests/s point span the fastest and slowest run.
``draw_bars``: requests/s and new server connections per request, one bar per case.
"""

from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.ticker import NullLocator, ScalarFormatter

# One colour per case, the same in every plot.
COLOURS = {
    "pooled": "tab:blue",
    "nullpool": "tab:gray",
    "tutorial": "tab:orange",
    "raw plain": "tab:green",
    "raw typed": "tab:olive",
    "ping": "tab:purple",
}


@dataclass
class Line:
    """One case at one number of workers: the medians at each number of clients."""

    case: str
    workers: int
    clients: list[int]
    rps: list[float]
    rps_low: list[float]
    rps_high: list[float]
    p99_ms: list[float]


@dataclass
class Bar:
    case: str
    workers: int
    rps: float
    new_connections_per_request: float


def draw_lines(path: Path, title: str, lines: list[Line]) -> None:
    figure, (rates, tails) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    several_workers = len({line.workers for line in lines}) > 1
    for line in lines:
        style = {
            "color": COLOURS.get(line.case),
            "linestyle": "-" if line.workers == 1 else "--",
            "marker": "o",
            "label": f"{line.case}, {line.workers} workers" if several_workers else line.case,
        }
        below = [rps - low for rps, low in zip(line.rps, line.rps_low, strict=True)]
        above = [high - rps for rps, high in zip(line.rps, line.rps_high, strict=True)]
        rates.errorbar(line.clients, line.rps, yerr=[below, above], capsize=3, **style)
        tails.plot(line.clients, line.p99_ms, **style)
    clients = sorted({c for line in lines for c in line.clients})
    for axes, label in ((rates, "requests/s (median; bars: min to max)"), (tails, "p99 ms")):
        axes.set_xscale("log", base=2)
        axes.set_xticks(clients)
        axes.xaxis.set_major_formatter(ScalarFormatter())
        axes.xaxis.set_minor_locator(NullLocator())
        axes.set_xlabel("clients (wrk connections)")
        axes.set_ylabel(label)
        axes.grid(alpha=0.3)
    rates.set_ylim(bottom=0)
    tails.set_yscale("log")
    tails.yaxis.set_major_formatter(ScalarFormatter())
    rates.legend(fontsize="small")
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)


def draw_bars(path: Path, title: str, bars: list[Bar]) -> None:
    figure, (rates, churn) = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
    several_workers = len({bar.workers for bar in bars}) > 1
    labels = [f"{bar.case}\n{bar.workers} workers" if several_workers else bar.case for bar in bars]
    colours = [COLOURS.get(bar.case) for bar in bars]
    rates.bar(labels, [bar.rps for bar in bars], color=colours)
    rates.set_ylabel("requests/s over the whole sequence (median)")
    churn.bar(labels, [bar.new_connections_per_request for bar in bars], color=colours)
    churn.set_ylabel("new server connections per request")
    for axes in (rates, churn):
        axes.grid(axis="y", alpha=0.3)
    figure.suptitle(title)
    figure.savefig(path, dpi=100)
    plt.close(figure)
