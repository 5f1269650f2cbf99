"""Shared by the loadgen scripts' reports (cluster.sh, cluster3.sh): one measurement's JSON
and CPU files, medians with their range, and a table cell."""

import json
import statistics


def load(out, mode, r):
    """The loadgen JSON and the CPU counters of run `r` of `mode` in `out`, or None."""
    try:
        return json.load(open(f"{out}/{mode}-{r}.json")), json.load(open(f"{out}/{mode}-{r}.cpu"))
    except (OSError, ValueError):
        return None


def med(xs):
    """(median, min, max) of the values that are not None, or None."""
    xs = [x for x in xs if x is not None]
    return (statistics.median(xs), min(xs), max(xs)) if xs else None


def cell(t, fmt="{:,.2f}"):
    """A table cell: the median and its range, '-' without values."""
    return "-" if t is None else f"{fmt.format(t[0])} ({fmt.format(t[1])}..{fmt.format(t[2])})"
