"""docs/performance.md, the chart across interpreters and the README's headline numbers,
from every results file in bench/results (make bench-report; make bench and bench-all
end with it).

    python bench/report.py

- docs/performance.md: between <!-- generated:summary --> markers, the targets of every
  interpreter in one table; between <!-- generated:results --> markers, one section per
  interpreter (its targets, the attach and drop families, the other measurements).
  The prose around the markers is kept.
- bench/results/chart.png: exitguard's attach beside the peers', and the figures with
  a target, across interpreters (matplotlib, when it is installed: make bench-report
  installs it from a wheel only; without one there is no chart, and the docs say so).
- docs/performance.md, between <!-- generated:callgrind --> markers: the instruction
  counts checked in as bench/callgrind_baseline.json (the regression guard's baseline).
- README.md: between <!-- generated:headline --> markers, the headline figures as
  ranges over the interpreters measured.

Results files of an older format (no "targets") are listed as stale and otherwise
ignored.  Nothing here measures anything.
"""

import glob
import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DOC = os.path.join(ROOT, "docs", "performance.md")
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(HERE, "results")
CHART = os.path.join(RESULTS, "chart.png")

sys.path.insert(0, HERE)
from run import fmt_ratio, fmt_value, fmt_x  # noqa: E402

TARGET_ORDER = ["decref", "attach_kept", "attach_pep788", "attach_new", "ref_pair", "log_disabled",
                "log_delivered", "exit"]
TARGET_SHORT = {
    "decref": "decref ≤ 5 ns", "attach_kept": "attach ≤ kept idioms", "attach_pep788": "attach < PEP 788 pair",
    "attach_new": "attach ≥ 4x new state", "ref_pair": "eg_ref pair ≤ 15 ns", "log_disabled": "disabled eg_log ≤ 3 ns",
    "log_delivered": "forwarder ≥ 500k/s", "exit": "exit ≤ +100 ms",
}


def version_key(v):
    """'3.13.15t' -> (3, 13, 15, True): numeric order, free-threaded after its GIL build."""
    return tuple(int(x) for x in re.findall(r"\d+", v)) + (v.endswith("t"),)


def load_all():
    docs, stale = [], []
    for path in glob.glob(os.path.join(RESULTS, "*.json")):
        if path.endswith("-callgrind.json"):
            continue
        with open(path) as f:
            d = json.load(f)
        (docs if "targets" in d else stale).append(d)
    docs.sort(key=lambda d: version_key(d["python"]))
    return docs, sorted((d["python"] for d in stale), key=version_key)


def replace_block(text, tag, body):
    start, end = "<!-- generated:%s -->" % tag, "<!-- /generated:%s -->" % tag
    if start not in text or end not in text:
        raise SystemExit("report: %s markers missing (%s ... %s)" % (tag, start, end))
    return text[: text.index(start) + len(start)] + "\n" + body.strip("\n") + "\n" + text[text.index(end):]


def _cell(s):
    return str(s).replace("|", "\\|")


def _targets(d):
    return {t["key"]: t for t in d["targets"]}


def meta_line(d):
    peers = ", ".join("%s %s" % (p, v) for p, v in d["peers"].items() if v)
    missing = "; ".join("%s not measured (%s)" % (p, m) for p, m in d.get("peers_missing", {}).items())
    gil = ""
    if d["python"].endswith("t"):
        gil = "; GIL %s during the run" % ("ENABLED" if d.get("gil_enabled") else "disabled")
    return ("CPython %s, exitguard %s; peers %s%s; %s; %s; median of %d, %s operations per attach/drop sample"
            "%s; load average %.2f before, %.2f after (a shared 2-core machine); %.0f s.%s" % (
                d["python"], d["exitguard"], peers or "none", gil, d["machine"], d["date"], d["reps"],
                "{:,}".format(d["ops"]), " (QUICK: smaller counts, not for comparison)" if d.get("quick") else "",
                d["loadavg_before"][0], d["loadavg_after"][0], d["seconds"],
                (" " + missing + ".") if missing else ""))


def summary_table(docs):
    lines = ["| interpreter | " + " | ".join(TARGET_SHORT[k] for k in TARGET_ORDER) + " |",
             "|---|" + "---|" * len(TARGET_ORDER)]
    for d in docs:
        t = _targets(d)
        cells = []
        for k in TARGET_ORDER:
            if k not in t or t[k]["verdict"] == "n/a":
                cells.append("–")
            else:
                fig = t[k]["figure"].split(";")[0] if k == "attach_kept" else t[k]["figure"]
                if k == "attach_kept":
                    fig += " (%s)" % t[k]["figure"].split(";")[1].strip().split(",")[0].split(" ")[0]
                cells.append("**%s** %s" % (t[k]["verdict"], _cell(fig)))
        lines.append("| %s | %s |" % (d["python"], " | ".join(cells)))
    return "\n".join(lines)


def family_table(d, kind):
    rows = [r for r in d["rows"] if r.get("family") == kind]
    if not rows:
        return ""
    what = "ns per pair" if kind == "attach" else "ns per reference"
    lines = ["| %s variant | %s | time ÷ exitguard's (%s) |" % (kind, what, rows[0]["label"].split(": ")[-1]),
             "|---|---|---|"]
    for r in rows:
        bold = "**" if r["who"] == "exitguard" else ""
        lines.append("| %s%s%s | %s | %s |" % (bold, _cell(r["label"]), bold, fmt_value(r["value"], "ns"),
                                               "reference" if r.get("vs_ref") is None else "%.2f" % r["vs_ref"]))
    return "\n".join(lines)


def other_table(d):
    lines = ["| # | measurement | exitguard | baselines (same run) | exitguard vs first baseline |",
             "|---|---|---|---|---|"]
    for r in d["rows"]:
        if r.get("family"):
            continue
        base = "<br>".join("%s: %s" % (_cell(b["name"]), fmt_value(b["value"], r["unit"])) for b in r["baselines"])
        label = _cell(r["label"].strip())
        if r.get("note"):
            label += " <sub>(%s)</sub>" % _cell(r["note"])
        lines.append("| %s | %s | %s | %s | %s |" % (r["bench"], label, fmt_value(r["value"], r["unit"],
                                                                               r.get("censored")),
                                                    base, _cell(fmt_ratio(r))))
    return "\n".join(lines)


def callgrind_table():
    """The checked-in instruction counts (bench/callgrind_baseline.json), one column
    per interpreter kept."""
    path = os.path.join(HERE, "callgrind_baseline.json")
    if not os.path.exists(path):
        return "No baseline yet: `make bench-callgrind` records one."
    with open(path) as f:
        base = json.load(f)
    keys = list(base["interpreters"])
    lines = ["| case | guarded | " + " | ".join("%s (%s)" % (k, base["interpreters"][k]["python"]) for k in keys)
             + " |", "|---|---|" + "---|" * len(keys)]
    for case, info in base["cases"].items():
        cells = []
        for k in keys:
            v = base["interpreters"][k]["counts"].get(case)
            cells.append("–" if v is None else "%.1f" % v)
        guarded = "yes" if info["guarded"] else "reference"
        if case == "drain" and any(k.endswith("t") for k in keys):
            guarded = "yes (not on t builds)"
        lines.append("| %s | %s | %s |" % (_cell(info["label"]), guarded, " | ".join(cells)))
    lines += ["", "Margin: a guarded count fails the check above baseline × %.2f + %g instructions; %s." % (
        1 + base["margin"], base["slack"],
        "; ".join("%s: %s" % (k, base["interpreters"][k]["valgrind"]) for k in keys[:1]))]
    return "\n".join(lines)


def section(d):
    t = ["| target | figure | verdict |", "|---|---|---|"]
    for x in d["targets"]:
        fig = x["figure"] + ((" <sub>(%s)</sub>" % x["detail"]) if x["detail"] else "")
        t.append("| %s | %s | **%s** |" % (_cell(x["text"]), _cell(fig), x["verdict"]))
    parts = ["### CPython %s" % d["python"], "", meta_line(d), "", "\n".join(t), "",
             family_table(d, "attach"), "", family_table(d, "drop"), "", other_table(d)]
    return "\n".join(parts)


def chart(docs):
    """Three panels across interpreters: the attach pairs, the per-operation figures
    with targets, and the forwarder's delivered rate.  Returns the path, or None
    without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vers = [d["python"] for d in docs]
    fam = [{r["key"]: r["value"] for r in d["rows"] if r.get("family") == "attach"} for d in docs]
    other = [{r["key"]: r for r in d["rows"] if r.get("key") and not r.get("family")} for d in docs]
    series = [("eg", "exitguard eg_gil_ensure/release", "#1f5fa8"),
              ("raw_kept", "RestoreThread/SaveThread floor", "#dddddd"),
              ("gilstate_kept", "PyGILState, kept", "#9e9e9e"),
              ("pybind11_kept", "pybind11 3.1, kept", "#e69f00"),
              ("nanobind_kept", "nanobind 3.1, kept", "#009e73"),
              ("cython_kept", "Cython 3.3, kept", "#cc79a7"),
              ("pep788_kept", "PEP 788 pair, kept (3.15)", "#8c564b"),
              ("gilstate_new", "PyGILState, new state", "#555555")]
    fig, axes = plt.subplots(3, 1, figsize=(11, 12), gridspec_kw=dict(height_ratios=[1.4, 1, 0.7]))
    ax = axes[0]
    width = 0.8 / len(series)
    for i, (key, label, color) in enumerate(series):
        xs = [j + (i - len(series) / 2 + 0.5) * width for j in range(len(vers))]
        ys = [f.get(key) for f in fam]
        ax.bar([x for x, y in zip(xs, ys) if y], [y for y in ys if y], width * 0.95, label=label, color=color)
    ax.set_yscale("log")
    top = max(v for f in fam for v in f.values())
    ax.set_ylim(top=top * 4)                 # room for the legend above the bars
    ax.set_xticks(range(len(vers)))
    ax.set_xticklabels(vers, fontsize=8)
    ax.set_ylabel("ns per attach + detach (log)")
    ax.set_title("Attach and detach from a native pthread, uncontended: exitguard beside the peers (same run)",
                 fontsize=9)
    ax.legend(fontsize=7, ncol=4, loc="upper left")
    ax.grid(axis="y", which="both", color="#eeeeee")
    ax.set_axisbelow(True)

    ax = axes[1]
    for key, label, target, color in (("enqueue1", "eg_decref enqueue, 1 thread", 5, "#1f5fa8"),
                                      ("ref_pair", "eg_ref_new + eg_ref_release", 15, "#d55e00"),
                                      ("log_disabled", "eg_log at a disabled level", 3, "#009e73")):
        ys = [o[key]["value"] if key in o else None for o in other]
        ax.plot([j for j, y in enumerate(ys) if y], [y for y in ys if y], "o-", color=color, label=label)
        ax.axhline(target, color=color, linestyle="--", linewidth=0.8)
        ax.text(-0.4, target, "target %g ns" % target, color=color, fontsize=7, va="bottom")
    ax.set_yscale("log")
    ax.set_xticks(range(len(vers)))
    ax.set_xticklabels(vers, fontsize=8)
    ax.set_ylabel("ns per operation (log)")
    ax.set_title("exitguard's hot paths against their targets (dashed)", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(axis="y", which="both", color="#eeeeee")

    ax = axes[2]
    ys = [o["log_delivered"]["value"] if "log_delivered" in o else 0 for o in other]
    ax.bar(range(len(vers)), ys, 0.5, color="#1f5fa8")
    ax.axhline(5e5, color="#c62828", linestyle="--", linewidth=0.8)
    ax.text(-0.4, 5e5, "target 500,000/s", color="#c62828", fontsize=7, va="bottom")
    ax.set_xticks(range(len(vers)))
    ax.set_xticklabels(vers, fontsize=8)
    ax.set_ylabel("messages / CPU-second")
    ax.set_title("Log forwarder into a Python NullHandler: messages delivered per CPU-second of the forwarder",
                 fontsize=9)
    ax.grid(axis="y", color="#eeeeee")
    fig.suptitle("exitguard %s benchmarks, %s (shared 2-core machine: compare within an interpreter)"
                 % (docs[-1]["exitguard"], docs[-1]["machine"]), fontsize=9)
    fig.tight_layout()
    fig.savefig(CHART, dpi=100)
    plt.close(fig)
    return CHART


def _range(values, unit, fmt=None):
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    lo, hi = min(values), max(values)
    f = fmt or (lambda v: fmt_value(v, unit))
    return f(lo) if f(lo) == f(hi) else "%s–%s" % (f(lo), f(hi))


def headline(docs):
    """The README's bullets: ranges over the interpreters measured, each figure as
    the tables below give it."""
    def fam(d, key, kind="attach"):
        return next((r["value"] for r in d["rows"] if r.get("family") == kind and r["key"] == key), None)

    def row(d, key):
        return next((r for r in d["rows"] if r.get("key") == key and not r.get("family")), None)

    vers = "%s to %s (%d interpreters)" % (docs[0]["python"], docs[-1]["python"], len(docs))
    x = lambda v: fmt_x(v)   # noqa: E731
    att = [fam(d, "eg") for d in docs]
    vs_kept = [fam(d, "eg") / min(v for v in (fam(d, "gilstate_kept"), fam(d, "pybind11_kept"),
                                               fam(d, "cython_kept")) if v) for d in docs]
    vs_new = [min(v for v in (fam(d, k) for k in ("gilstate_new", "pybind11_default", "nanobind_default",
                                                    "cython_default")) if v) / fam(d, "eg") for d in docs]
    drop_eg = [fam(d, "eg_decref", "drop") for d in docs]
    drop_peer = [min(v for v in (fam(d, k, "drop") for k in ("pybind11_kept", "nanobind_kept", "cython_kept",
                                                              "gilstate_kept")) if v) / fam(d, "eg_decref", "drop")
                 for d in docs]
    enq = [row(d, "enqueue1")["value"] for d in docs if row(d, "enqueue1")]
    refp = [row(d, "ref_pair")["value"] for d in docs if row(d, "ref_pair")]
    logd = [row(d, "log_disabled")["value"] for d in docs if row(d, "log_disabled")]
    fwd = [row(d, "log_delivered")["value"] for d in docs if row(d, "log_delivered")]
    ex = [row(d, "exit")["delta"] for d in docs if row(d, "exit")]
    p788 = [(d["python"], fam(d, "eg"), fam(d, "pep788_kept")) for d in docs if fam(d, "pep788_kept")]
    misses = {}
    for d in docs:
        for t in d["targets"]:
            if t["verdict"] == "MISS":
                misses.setdefault(TARGET_SHORT[t["key"]], []).append(d["python"])
    lines = [
        "Measured by `make bench-all` on CPython %s, each figure beside pybind11 %s, nanobind %s, Cython %s "
        "and CPython's own APIs in the same run, on a shared 2-core machine "
        "([tables and method](docs/performance.md)):" % (
            vers, docs[-1]["peers"].get("pybind11"), docs[-1]["peers"].get("nanobind"),
            docs[-1]["peers"].get("cython")),
        "",
        "- Attach + detach from a native thread (`eg_gil_ensure`/`eg_gil_release`, refused with `-ESHUTDOWN` "
        "once shutdown begins): %s per pair, %s the time of the fastest unprotected kept-state pair "
        "(PyGILState, pybind11, Cython), and %s faster than what every binding does by default (a new "
        "thread state each time)." % (_range(att, "ns"), _range(vs_kept, "", lambda v: "%.2fx" % v),
                                      _range(vs_new, "", x)),
    ]
    if p788:
        lines.append("- On 3.15: %s." % "; ".join("%s %s vs CPython's PEP 788 pair %s" % (
            v, fmt_value(e, "ns"), fmt_value(p, "ns")) for v, e, p in p788))
    lines += [
        "- Dropping a reference from a native thread without the GIL (`eg_decref`): %s, %s faster than "
        "attach + decref with any peer's kept thread state; enqueue alone (the main thread busy) %s." % (
            _range(drop_eg, "ns"), _range(drop_peer, "", x), _range(enq, "ns")),
        "- `eg_ref_new` + `eg_ref_release`: %s; `eg_log` at a disabled level: %s; the log forwarder delivers "
        "%s messages per CPU-second into a Python `NullHandler`; exit with 64 native threads and 1,000,000 live "
        "references: %s." % (_range(refp, "ns"), _range(logd, "ns"), _range(fwd, "", lambda v: "{:,.0f}".format(v)),
                             _range(ex, "", lambda v: "%+.0f ms" % v)),
    ]
    if misses:
        lines.append("- Targets missed, reported rather than hidden (the analysis is in docs/performance.md): %s."
                     % "; ".join("%s (%s)" % (k, ", ".join(v) if len(v) < len(docs) else "every interpreter")
                                 for k, v in misses.items()))
    lines += ["", "![exitguard beside the peers across interpreters](bench/results/chart.png)"]
    return "\n".join(lines)


def main():
    docs, stale = load_all()
    if not docs:
        raise SystemExit("report: no results in %s (make bench first)" % RESULTS)
    path = chart(docs)
    with open(DOC) as f:
        text = f.read()
    summary = summary_table(docs)
    if path is None:
        summary += "\n\nNo chart: matplotlib has no wheel for the interpreter that made this report."
    if stale:
        summary += "\n\nResults of an older format, not shown: %s." % ", ".join(stale)
    text = replace_block(text, "summary", summary)
    text = replace_block(text, "results", "\n\n".join(section(d) for d in docs))
    text = replace_block(text, "callgrind", callgrind_table())
    with open(DOC, "w") as f:
        f.write(text)
    with open(README) as f:
        readme = f.read()
    with open(README, "w") as f:
        f.write(replace_block(readme, "headline", headline(docs)))
    print("report: %d interpreters (%s) -> docs/performance.md, README.md%s" % (
        len(docs), ", ".join(d["python"] for d in docs), ", " + os.path.relpath(path, ROOT) if path else ""))


if __name__ == "__main__":
    main()
