"""Outputs of a benchmark run (bench/run.py): the JSON, the chart and the docs table.

- bench/results/<python-version>.json   every row with its samples, plus the run's metadata
- bench/results/<python-version>.png    exitguard beside its baselines, one bar group per row
- docs/performance.md                    the table between <!-- results:<version> --> markers;
                                         other interpreters' tables and the prose are kept

bench/callgrind.py uses replace_block() for its own table the same way.
"""

import json
import os
import re

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOC = os.path.join(ROOT, "docs", "performance.md")
RESULTS = os.path.join(HERE, "results")


def replace_block(tag, version, body, doc=DOC):
    """Put body between <!-- TAG:VERSION --> and <!-- /TAG:VERSION --> in doc: replaced
    where the markers exist, else appended under the heading "Results per interpreter"
    (TAG results) or at the end."""
    start, end = "<!-- %s:%s -->" % (tag, version), "<!-- /%s:%s -->" % (tag, version)
    block = "%s\n%s\n%s" % (start, body.strip("\n"), end)
    text = open(doc).read() if os.path.exists(doc) else "# Performance\n"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        # A new block goes before the first block of a newer version, else before the
        # <!-- TAG:end --> anchor, else at the end: blocks stay sorted by version.
        later = [m for m in re.finditer(r"<!-- %s:([0-9][^ ]*) -->" % re.escape(tag), text)
                 if _version_key(m.group(1)) > _version_key(version)]
        anchor = "<!-- %s:end -->" % tag
        if later:
            at = later[0].start()
            text = text[:at] + block + "\n\n" + text[at:]
        elif anchor in text:
            text = text.replace(anchor, block + "\n\n" + anchor)
        else:
            text = text.rstrip("\n") + "\n\n" + block + "\n"
    with open(doc, "w") as f:
        f.write(text)
    return doc


def _version_key(v):
    """'3.13.0t' -> (3, 13, 0, 't'): numeric order, free-threaded after its GIL build."""
    nums = re.findall(r"\d+", v)
    return tuple(int(x) for x in nums) + (v[-1:] == "t",)


def _cell(s):
    return str(s).replace("|", "\\|")


def markdown_table(meta, rows):
    # Imported here: run.py imports this module and owns the number formats.
    from run import fmt_ratio, fmt_value
    lines = [
        "CPython %s, exitguard %s, %s; %s; median of %d%s; load average %.2f before, %.2f after." % (
            meta["python"], meta["exitguard"], meta["machine"], meta["date"], meta["reps"],
            " (QUICK: smaller counts, not for comparison)" if meta.get("quick") else "",
            meta["loadavg_before"][0], meta["loadavg_after"][0]),
        "",
        "| # | measurement | exitguard | baselines (same run) | exitguard vs first baseline | target |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        base = "<br>".join("%s: %s" % (_cell(b["name"]), fmt_value(b["value"], r["unit"])) for b in r["baselines"])
        tgt = "<br>".join("%s **%s**" % (_cell(t["text"]), t["verdict"]) for t in r["targets"])
        label = _cell(r["label"].strip())
        if r.get("note"):
            label += " <sub>(%s)</sub>" % _cell(r["note"])
        lines.append("| %s | %s | %s | %s | %s | %s |" % (
            r["bench"], label, fmt_value(r["value"], r["unit"], r.get("censored")), base,
            _cell(fmt_ratio(r)), tgt))
    if meta.get("missing"):
        lines += ["", "Not measured (feature not landed): %s." % ", ".join(meta["missing"])]
    return "\n".join(lines)


def write_json(meta, rows):
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, meta["python"] + ".json")
    with open(path, "w") as f:
        json.dump(dict(meta, rows=rows), f, indent=1)
        f.write("\n")
    return path


def write_chart(meta, rows):
    """One bar group per row: exitguard first (blue), then each baseline (greys), on a log
    axis; per-operation rows on top, millisecond rows (exit time, drain latency) below.
    Each exitguard bar is labelled with its value and its verdicts (green PASS, red MISS)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    per_op = [r for r in rows if r["baselines"] and r["unit"] == "ns"]
    per_ms = [r for r in rows if r["unit"] == "ms"]
    greys = ["#8f8f8f", "#b8b8b8", "#dadada"]
    bar, gap = 0.34, 0.45

    def group_height(r):
        return bar * (1 + len(r["baselines"])) + gap

    def panel(ax, sel, unit, title):
        y = 0.0
        ticks, labels = [], []
        values = []
        for r in sel:
            bars = [("exitguard", r["value"])] + [(b["name"], b["value"]) for b in r["baselines"]]
            for i, (name, v) in enumerate(bars):
                v = max(v, 1e-3)
                values.append(v)
                yy = y + i * bar
                ax.barh(yy, v, height=bar * 0.9, color="#2a6fb0" if i == 0 else greys[min(i - 1, 2)],
                        edgecolor="none")
                if i == 0:
                    verdicts = ["%s (%s)" % (t["verdict"], t["text"]) for t in r["targets"]]
                    miss = any(t["verdict"] == "MISS" for t in r["targets"])
                    color = "#c62828" if miss else ("#1a7f37" if verdicts else "black")
                    shown = ("> " if r.get("censored") else "") + _short(v, unit)
                    ax.text(v * 1.1, yy, "  ".join([shown] + verdicts), va="center",
                            fontsize=6.5, color=color, fontweight="bold" if verdicts else "normal")
                else:
                    ax.text(v * 1.1, yy, "%s  %s" % (_short(v, unit), name), va="center", fontsize=6.5,
                            color="#444444")
            ticks.append(y + bar * len(bars) / 2 - bar / 2)
            labels.append("#%s %s" % (r["bench"], r["label"].strip()))
            y += group_height(r)
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels, fontsize=7)
        ax.set_ylim(y - gap / 2, -gap / 2 - bar / 2)
        ax.set_xscale("log")
        ax.set_xlabel(unit + " (log scale; shorter is better)", fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_xlim(min(values) / 2, max(values) * 400)
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="x", which="major", color="#eeeeee")
        ax.set_axisbelow(True)

    heights = [sum(group_height(r) for r in per_op) or 1, sum(group_height(r) for r in per_ms) or 1]
    fig, axes = plt.subplots(2, 1, figsize=(11, 1.3 + 0.36 * sum(heights)),
                             gridspec_kw=dict(height_ratios=heights))
    panel(axes[0], per_op, "ns", "per operation: exitguard (blue) vs baselines measured in the same run (grey)")
    if per_ms:
        panel(axes[1], per_ms, "ms", "drain latency and exit time")
    else:
        axes[1].axis("off")
    fig.suptitle("exitguard %s, CPython %s, %s, %s%s" % (
        meta["exitguard"], meta["python"], meta["machine"], meta["date"],
        " (QUICK run)" if meta.get("quick") else ""), fontsize=9)
    fig.tight_layout()
    path = os.path.join(RESULTS, meta["python"] + ".png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _short(v, unit):
    if v >= 100:
        return "%.0f %s" % (v, unit)
    if v >= 10:
        return "%.1f %s" % (v, unit)
    return "%.2f %s" % (v, unit)


def write_all(meta, rows):
    paths = [write_json(meta, rows)]
    try:
        paths.append(write_chart(meta, rows))
    except ImportError:
        print("matplotlib is not installed: no chart (make bench installs it)")
    paths.append(replace_block("results", meta["python"], markdown_table(meta, rows)))
    return paths
