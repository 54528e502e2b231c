"""Render a picture of the dashboard's main panels from real metric data.

    python3 docs/grafana/render.py SCRAPE.txt OUT.png

SCRAPE.txt holds `<unix time> <sample line>` lines, as bench/daemon.sh writes them with
BENCH_SCRAPE set (scripts/dashboard.sh runs both). The panels compute what the dashboard's
PromQL asks for (rates from counter differences, quantiles from histogram buckets), so the
picture shows what an operator sees in Grafana. Needs matplotlib (pip install matplotlib).
"""

import collections
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SAMPLE = re.compile(r"^(\S+) ([a-z_]+)(\{[^}]*\})? (\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def load(path):
    """{(name, labels): [(t, value)]} from a scrape file."""
    series = collections.defaultdict(list)
    for line in open(path):
        m = SAMPLE.match(line.strip())
        if not m:
            continue
        t, name, labels, value = m.groups()
        key = (name, tuple(sorted(LABEL.findall(labels or ""))))
        series[key].append((float(t), float(value)))
    return series


def by_label(series, name, label):
    out = collections.defaultdict(list)
    for (n, labels), points in series.items():
        if n == name:
            out[dict(labels).get(label, "")] += points
    return {k: sorted(v) for k, v in out.items()}


def increase(points, window=2.0):
    """Per-window increase of a counter, as `increase(x[window])` would draw it."""
    out = []
    for i, (t, v) in enumerate(points):
        j = i
        while j > 0 and t - points[j - 1][0] <= window:
            j -= 1
        out.append((t, max(0.0, v - points[j][1])))
    return out


def quantile(series, name, q):
    """histogram_quantile(q) of the cumulative buckets over time."""
    buckets = collections.defaultdict(dict)
    for (n, labels), points in series.items():
        if n != name + "_bucket":
            continue
        le = dict(labels)["le"]
        le = float("inf") if le == "+Inf" else float(le)
        for t, v in points:
            buckets[t][le] = buckets[t].get(le, 0.0) + v
    out = []
    for t in sorted(buckets):
        bs = sorted(buckets[t].items())
        total = bs[-1][1]
        if total <= 0:
            continue
        rank, prev_le, prev_c = q * total, 0.0, 0.0
        for le, c in bs:
            if c >= rank:
                if le == float("inf"):
                    out.append((t, prev_le))
                else:
                    frac = 0 if c == prev_c else (rank - prev_c) / (c - prev_c)
                    out.append((t, prev_le + (le - prev_le) * frac))
                break
            prev_le, prev_c = le, c
    return out


def main(scrape, png):
    s = load(scrape)
    if not s:
        sys.exit(f"no samples in {scrape}")
    t0 = min(p[0][0] for p in s.values() if p)
    rel = lambda pts: ([t - t0 for t, _ in pts], [v for _, v in pts])  # noqa: E731
    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    fig.suptitle("codex-runner: the dashboard's panels, from a benchmark run (scripts/dashboard.sh)")

    ax = axes[0][0]
    for state, pts in by_label(s, "codex_runner_requests_total", "state").items():
        ax.plot(*rel(increase(pts)), label=state)
    ax.set_title("Requests recorded, by state (per 2 s)")

    ax = axes[0][1]
    for q in (0.5, 0.95):
        ax.plot(*rel(quantile(s, "codex_runner_request_duration_seconds", q)), label=f"p{int(q * 100)}")
    ax.set_title("Request duration (s)")

    ax = axes[0][2]
    for q in (0.5, 0.95):
        ax.plot(*rel(quantile(s, "codex_runner_request_queue_wait_seconds", q)), label=f"p{int(q * 100)}")
    ax.set_title("Queue wait (s)")

    ax = axes[1][0]
    for name, label in (("codex_runner_requests_running", "running"), ("codex_runner_requests_queued", "queued")):
        for _, pts in by_label(s, name, "").items():
            ax.plot(*rel(pts), label=label)
    ax.set_title("Running and queued")

    ax = axes[1][1]
    for outcome, pts in by_label(s, "codex_runner_webhook_deliveries_total", "outcome").items():
        ax.plot(*rel(increase(pts)), label=outcome)
    ax.set_title("Webhook deliveries (per 2 s)")

    ax = axes[1][2]
    for name, label in (("codex_runner_pushes_total", "pushes"), ("codex_runner_push_replays_total", "replays")):
        for _, pts in by_label(s, name, "").items():
            ax.plot(*rel(increase(pts)), label=label)
    ax.set_title("Pushes and replays (per 2 s)")

    for row in axes:
        for ax in row:
            ax.set_xlabel("seconds")
            ax.grid(alpha=0.3)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=80)
    print(png)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
