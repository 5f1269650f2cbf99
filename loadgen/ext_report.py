#!/usr/bin/env python3
"""Tables for loadgen/ext.sh: one per §8 target, each with the figure, its baseline measured
in the same run, the ratio, the goal, PASS/FAIL and the generator command.

Usage: ext_report.py RESULTS_DIR > ext.md
Reads <name>-<run>.json (the loadgen's --out) and <name>.cmd. Each cell is the median over
the runs, with min..max when there is more than one run.
"""
import glob
import json
import os
import statistics
import sys

out = sys.argv[1]


def runs(name):
    res = []
    for p in sorted(glob.glob(os.path.join(out, f"{name}-[0-9]*.json"))):
        try:
            res.append(json.load(open(p)))
        except (OSError, ValueError):
            pass
    return res


def vals(name, f):
    xs = []
    for d in runs(name):
        try:
            v = f(d)
        except (KeyError, IndexError, TypeError, ZeroDivisionError):
            v = None
        if v is not None:
            xs.append(v)
    return xs


def med(xs):
    return statistics.median(xs) if xs else None


def num(v):
    if v is None:
        return "-"
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f} M"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def cell(xs):
    m = med(xs)
    if m is None:
        return "-"
    s = num(m)
    if len(xs) > 1:
        s += f" ({num(min(xs))}..{num(max(xs))})"
    return s


def rcell(xs):
    """A ratio cell: three decimals, so that a verdict at the goal's edge reads as it was made."""
    if not xs:
        return "-"
    m = med(xs)
    s = f"{m:.3f}"
    if len(xs) > 1:
        s += f" ({min(xs):.3f}..{max(xs):.3f})"
    return s


def cmd(name):
    try:
        return "`" + open(os.path.join(out, f"{name}.cmd")).read().strip().replace("target/release/", "") + "`"
    except OSError:
        return "-"


def verdict(ok):
    if ok is None:
        return "-"
    return "**PASS**" if ok else "**FAIL**"


def by_run(name, f):
    """{run id: f(result)} for the results of `name` (run id: the file name's suffix)."""
    res = {}
    for p in sorted(glob.glob(os.path.join(out, f"{name}-[0-9]*.json"))):
        try:
            v = f(json.load(open(p)))
        except (OSError, ValueError, KeyError, IndexError, TypeError, ZeroDivisionError):
            v = None
        if v is not None:
            res[p.rsplit("-", 1)[1]] = v
    return res


def paired(xname, bname, f):
    """Per-run ratios f(x) / f(baseline), x and its baseline measured back to back."""
    x, b = by_run(xname, f), by_run(bname, f)
    return [x[k] / b[k] for k in sorted(x) if k in b and b[k]]


def ratio(a, b):
    a, b = med(a), med(b)
    if a is None or b is None or b == 0:
        return None
    return a / b


def table(title, rows, cmds):
    print(f"**{title}**\n")
    print("| figure | measured | baseline (same run) | ratio | goal | verdict |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print()
    for c in cmds:
        print(f"- {c}")
    print()


print("### Machine and run\n\n```")
try:
    print(open(os.path.join(out, "machine.txt")).read().strip())
except OSError:
    pass
print("```\n")
try:
    loads = {}
    for line in open(os.path.join(out, "load.txt")):
        name, _, v = line.split()
        loads.setdefault(name, []).append(float(v))
    allv = sorted(v for vs in loads.values() for v in vs)
    print(
        f"1-minute load average before each measurement (2 cores; above 2 means other jobs competed "
        f"for the cores): min {allv[0]:.2f}, median {statistics.median(allv):.2f}, max {allv[-1]:.2f}.\n"
    )
except (OSError, ValueError, IndexError):
    pass
print(
    "Medians of the runs (min..max); a ratio is the median of the per-run ratios (extension over "
    "the baseline measured just before it). Broker: `taskset -c 0 ringcast --config ringcast-ext.toml "
    "--shards 1 --rate-limit-per-sec 1000000 --rate-limit-burst 1000000 --upgrades-per-ip 0 "
    "--pending-handshakes-per-ip 0 --rest-connections-per-ip 0 --max-outbound-bytes 4194304` "
    "(`ringcast-ext.toml` = `tuning/ringcast-bench.toml` + `[[apps.history]]` `hist/**` size 1000, "
    "`retain/**` size 100000, `history_max_bytes` 1 GiB), fresh for every measurement; generator "
    "`taskset -c 1 ringcast-loadgen … --addr 127.0.0.1:18080 --broker-pid $P`.\n"
)

# a. wildcard
def overloaded(d, i):
    st = d["steps"][i]
    return st["delivered"] < 0.99 * st["expected"]


if runs("wc-none"):
    rows = []
    cap = lambda d: d["deliveries"]["unique"] / d["broker"]["cpu_secs_with_grace"]
    base_cap = vals("wc-none", cap)
    for shape in ("mixed", "residual"):
        x = vals(f"wc-{shape}", cap)
        q = paired(f"wc-{shape}", "wc-none", cap)
        rows.append([
            f"10,000 `{shape}` patterns, whole run: publications delivered per broker CPU-s (the core's capacity)",
            cell(x), cell(base_cap), rcell(q), "≥ 0.8×", verdict(None if not q else med(q) >= 0.8)])
    steps = len(runs("wc-none")[0]["steps"])
    for shape in ("mixed", "residual"):
        for i in range(steps):
            rate = runs("wc-none")[0]["steps"][i]["rate"]
            f = lambda d: None if overloaded(d, i) else d["steps"][i]["deliveries_per_broker_cpu_sec"]
            x, b = vals(f"wc-{shape}", f), vals("wc-none", f)
            over = sum(overloaded(d, i) for d in runs(f"wc-{shape}"))
            m = cell(x) + (f"; overloaded in {over} of {len(runs(f'wc-{shape}'))} runs" if over else "")
            rows.append([f"`{shape}`, {rate:,.0f} pub/s offered: publishes per broker CPU-s in the step",
                         m, cell(b), num(ratio(x, b)), "-", "-"])
            xd = vals(f"wc-{shape}", lambda d: d["steps"][i]["deliveries_per_sec"])
            bd = vals("wc-none", lambda d: d["steps"][i]["deliveries_per_sec"])
            rows.append([f"`{shape}`, {rate:,.0f} pub/s offered: delivered in the step, per s",
                         cell(xd), cell(bd), num(ratio(xd, bd)), "-", "-"])
    table("a. publish throughput with 10,000 non-matching pattern subscriptions (§8.3)", rows,
          [cmd("wc-none"), cmd("wc-mixed"), cmd("wc-residual")])

# b. history fan-out
if runs("hf-fan") or runs("hf2-fan"):
    rows = []
    for pre in ("hf", "hf2"):
        if not runs(f"{pre}-fan"):
            continue
        d0 = runs(f"{pre}-fan")[0]
        subs = d0["steps"][0]["expected"] // max(d0["steps"][0]["sent"], 1)
        for i, st in enumerate(d0["steps"]):
            # Only steps the generator kept up with: a lagging reader lets the broker write
            # several frames per writev, which lowers its CPU per delivery and says nothing
            # about history. Kept up: delivery p99 within --break-p99-ms (15 ms), or median
            # latency under the gap between publications (frames rarely written together).
            def kept_up(d):
                s = d["steps"][i]
                return s["delivered"] == s["expected"] and (
                    s["latency"]["p99_ms"] <= 15 or s["latency"]["p50_ms"] < 1e3 / s["rate"])

            us = lambda d: 1e6 / d["steps"][i]["deliveries_per_broker_cpu_sec"] if kept_up(d) else None
            x, b = vals(f"{pre}-hist", us), vals(f"{pre}-fan", us)
            q = paired(f"{pre}-hist", f"{pre}-fan", us)
            n = len(runs(f"{pre}-hist"))
            rows.append([
                f"{subs:,} subscribers × {st['rate']:,.0f} pub/s: broker CPU µs per delivery, `hist/fan` vs `fan` "
                f"({len(q)} of {n} pairs where the generator kept up in both)",
                cell(x), cell(b), rcell(q), "≤ 1.15×", verdict(None if not q else med(q) <= 1.15)])
            lost = lambda d: d["deliveries"]["lost"] + d["deliveries"]["duplicated"] + d["deliveries"]["reordered"]
            rows.append([f"{subs:,} subscribers: lost + duplicated + reordered", cell(vals(f"{pre}-hist", lost)),
                         cell(vals(f"{pre}-fan", lost)), "-", "0", verdict(med(vals(f"{pre}-hist", lost)) == 0)])
    table("b. fan-out on a history channel: broker CPU per delivery (§8.1)", rows,
          [cmd("hf-hist"), cmd("hf2-hist"), "baseline: the same with `--channel fan`"])

# c. resume
for name, label in (("resume", ""),):
    if not runs(name):
        continue
    p99 = vals(name, lambda d: d["resume"]["p99_ms"] if d["reps"] else None)
    lp99 = vals(name, lambda d: d["live"]["p99_ms"] if d["reps"] else None)
    q = ratio(p99, lp99)
    reps = vals(name, lambda d: d["reps"])
    nr = vals(name, lambda d: d["not_recovered"])
    rows = [
        ["resume 1,000 missed: subscribe-with-since → 1,000th replayed message, p99 ms", cell(p99),
         cell(lp99) + " (live burst of 1,000)", num(q), "< 10 ms", verdict(None if not p99 else med(p99) < 10)],
        ["same, p50 ms", cell(vals(name, lambda d: d["resume"]["p50_ms"])),
         cell(vals(name, lambda d: d["live"]["p50_ms"])), "-", "-", "-"],
        ["same, max ms", cell(vals(name, lambda d: d["resume"]["max_ms"])),
         cell(vals(name, lambda d: d["live"]["max_ms"])), "-", "-", "-"],
        ["broker CPU per repetition, ms (from /proc, 10 ms ticks summed over all repetitions)",
         cell(vals(name, lambda d: d["broker_cpu_secs_resume_windows"] / d["reps"] * 1e3)),
         cell(vals(name, lambda d: d["broker_cpu_secs_live_windows"] / d["reps"] * 1e3)), "-", "-", "-"],
        ["repetitions per run; `recovered:false` answers", f"{med(reps):,.0f}; {cell(nr)}", "-", "-", "0 not recovered",
         verdict(None if not nr else max(nr) == 0)],
    ]
    table(f"c. resuming 1,000 missed messages (§8.1){label}", rows, [cmd(name)])

# d. retain
for name in ("retain", "retain1"):
    if not runs(name):
        continue
    frame = vals(name, lambda d: d["frame_bytes"])
    rss = vals(name, lambda d: d["rss_bytes_per_message"])
    goal = med(vals(name, lambda d: d["goal_bytes_per_message"]))
    gauge = vals(name, lambda d: d["history_bytes_per_message"])
    plain = vals(name, lambda d: d["plain_rss_bytes_per_message"])
    rows = [
        ["broker RSS growth per retained message, B", cell(rss), cell(plain) + " (same publications, plain channels)",
         num(ratio(rss, frame)) + "× frame", f"≤ frame + 64 = {num(goal)} B", verdict(None if not rss or goal is None else med(rss) <= goal)],
        ["`ringcast_history_bytes` growth per retained message, B", cell(gauge), "-",
         num(ratio(gauge, frame)) + "× frame", f"≤ {num(goal)} B", verdict(None if not gauge or goal is None else med(gauge) <= goal)],
        ["message frame size (WebSocket header + payload), B", cell(frame), "-", "-", "-", "-"],
    ]
    n = med(vals(name, lambda d: d["messages"]))
    ch = med(vals(name, lambda d: d["channels"]))
    table(f"d. memory per retained message ({n:,.0f} messages over {ch:,.0f} channel(s)) (§8.1)", rows, [cmd(name)])

# e. group
if runs("group"):
    secs = lambda d: d["steps"][0]["secs"]
    rate = vals("group", lambda d: d["group"]["delivered"] / secs(d))
    base = vals("group-plain", lambda d: d["steps"][0]["deliveries_per_sec"])
    offered = vals("group", lambda d: d["steps"][0]["rate"])
    lost = vals("group", lambda d: d["group"]["lost"])
    extra = vals("group", lambda d: d["group"]["extra_deliveries"])
    blost = vals("group-plain", lambda d: d["deliveries"]["lost"])
    cpu_f = lambda d: d["steps"][0]["broker_cpu_secs"] / d["steps"][0]["sent"] * 1e6
    cpu, bcpu = vals("group", cpu_f), vals("group-plain", cpu_f)
    mn = vals("group", lambda d: d["group"]["per_member_min"])
    mx = vals("group", lambda d: d["group"]["per_member_max"])
    members = med(vals("group", lambda d: d["group"]["members"]))
    o = med(offered)
    rows = [
        [f"{members:,.0f} members, {o:,.0f} pub/s offered: deliveries/s (publications reaching a member)", cell(rate),
         cell(base) + " (1 plain subscriber)", num(ratio(rate, base)), f"≥ {o:,.0f}/s", verdict(None if not rate else med(rate) >= 0.999 * o)],
        ["publications lost (reached no member)", cell(lost), cell(blost), "-", "0", verdict(None if not lost else max(lost) == 0)],
        ["extra deliveries (a publication at a second member)", cell(extra), "-", "-", "0", verdict(None if not extra else max(extra) == 0)],
        ["deliveries per member, min / max", f"{cell(mn)} / {cell(mx)}", "-", "-", "even", "-"],
        ["broker CPU µs per publication", cell(cpu), cell(bcpu), rcell(paired("group", "group-plain", cpu_f)), "-", "-"],
    ]
    table("e. a queue group of 100 members at 50,000 publications/s (§8.2)", rows, [cmd("group"), cmd("group-plain")])
