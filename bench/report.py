#!/usr/bin/env python3
"""Turns the JSON files of one bench/run-all run into tables and plots.

Reads <results>/<program>.json (Google Benchmark's --benchmark_out format) for every program that
ran, writes one markdown table per comparison, each with ratios against the baseline named in its
heading, and draws the plots with gnuplot as SVG into <results>. The markdown goes to --markdown,
or replaces the generated blocks of --readme: one block for the run (command, commit, machine,
failed rows) and one per program, each between its two markers (see `markers`), so that each
program's tables sit under its own method.

Statistics: a row's median and p99 are those the program computed over the row's own samples (a
repetition's switches or shootdowns), or, for programs that time one sample per repetition, the
median and p99 over the repetitions. Every table says which.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
from collections import defaultdict

PROGRAMS = ("adaptive_phases", "site_cost", "stop_blackout", "switch_blackout", "lock_throughput",
            "shootdown_latency", "trigger_reaction", "module_cost")


def markers(block):
    """The lines that open and close a generated block: 'run' or a program's name."""
    return (f"<!-- bench/run-all: generated {block}, begin -->",
            f"<!-- bench/run-all: generated {block}, end -->")


class ReportError(Exception):
    pass


def load(results, program):
    path = os.path.join(results, program + ".json")
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ReportError(f"{path}: not a Google Benchmark JSON file ({e})") from e
    if "benchmarks" not in data:
        raise ReportError(f"{path}: no 'benchmarks' list: was it written by --benchmark_out?")
    return data


def parse_name(run_name):
    """'BM_X/stop/vcpus:2/sites:10/iterations:200/manual_time' -> ('stop', {'vcpus': 2, ...})."""
    parts = run_name.split("/")[1:]
    label = None
    args = {}
    for p in parts:
        if ":" in p:
            key, value = p.split(":", 1)
            if key in ("iterations", "repeats", "threads", "min_time"):
                continue
            try:
                args[key] = int(value)
            except ValueError:
                args[key] = value
        elif p not in ("manual_time", "real_time", "process_time"):
            label = p
    return label, args


def iterations(data):
    """The per-repetition entries (not aggregates) and any that reported an error."""
    rows, errors = [], []
    for b in data["benchmarks"]:
        if b.get("run_type", "iteration") != "iteration":
            continue
        if b.get("error_occurred"):
            errors.append(f"{b['name']}: {b.get('error_message', 'error')}")
            continue
        rows.append(b)
    return rows, errors


def percentile(values, q):
    if not values:
        return float("nan")
    s = sorted(values)
    rank = q * (len(s) - 1)
    lo = int(math.floor(rank))
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (rank - lo)


def fmt(x, digits=3):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def ratio(a, b):
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return "–"
    return f"{a / b:.3g}×"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


# ---- one section per program --------------------------------------------------------------------

def site_cost(data):
    medians, p99s = {}, {}
    for b in data["benchmarks"]:
        if b.get("run_type") != "aggregate":
            continue
        scale = {"ns": 1.0, "us": 1e3, "ms": 1e6, "s": 1e9}[b.get("time_unit", "ns")]
        if b.get("aggregate_name") == "median":
            medians[b["run_name"]] = b["real_time"] * scale
        elif b.get("aggregate_name") == "p99":
            p99s[b["run_name"]] = b["real_time"] * scale
    if not medians:
        raise ReportError("site_cost.json has no median aggregates: run it with repetitions")
    # Each case against the hand-written code it replaces (bench/site_cost.cpp, kCases).
    baseline = {"a": "e", "b": "e", "c": "d", "d": "d", "e": "e", "f": "g", "g": "g"}
    by_letter = {name[0]: name for name in medians}
    rows = []
    for name in sorted(medians):
        base = by_letter.get(baseline.get(name[0], ""), None)
        rows.append([f"`{name}`", fmt(medians[name]), fmt(p99s.get(name)),
                     f"`{base}`" if base else "–",
                     ratio(medians[name], medians.get(base)) if base else "–"])
    return ("### Cost of one op at a site (site_cost; baseline: the hand-written code it replaces)\n\n"
            "ns per op: median and p99 over the repetitions, each a mean over millions of ops.\n\n"
            + table(["case", "median ns", "p99 ns", "baseline", "median / baseline"], rows))


def stop_blackout(data):
    # The program reports aggregates only: the median and p99 over its 200 repetitions.
    stats = defaultdict(dict)
    for b in data["benchmarks"]:
        if b.get("run_type") != "aggregate":
            continue
        _, args = parse_name(b["run_name"])
        scale = {"ns": 1e-3, "us": 1.0, "ms": 1e3, "s": 1e6}[b.get("time_unit", "us")]
        stats[(args["vcpus"], args["spin"], args["yielding"])][b["aggregate_name"]] = (
            b["real_time"] * scale, b.get("repetitions"))
    if not stats:
        raise ReportError("stop_blackout.json has no aggregates (median, p99)")
    def get(key, name):
        return stats[key].get(name, (None, None))[0]
    out = []
    for key in sorted(stats, key=lambda k: (k[2], k[1], k[0])):
        med = get(key, "median")
        out.append([key[0], "yes" if key[2] else "no", key[1],
                    stats[key].get("median", (None, "–"))[1], fmt(med), fmt(get(key, "p99")),
                    ratio(med, get((1, key[1], key[2]), "median"))])
    text = ("### Stop-machine rendezvous (stop_blackout; baseline: 1 vCPU, same spin and yielding)\n\n"
            "µs that the other vCPUs are parked by one stop_machine(): median and p99 over the "
            "repetitions (one stop each).\n\n"
            + table(["vCPUs", "yielding", "spin", "stops", "median µs", "p99 µs",
                     "median / 1 vCPU"], out))
    return text, []


def switch_blackout(data):
    rows, errors = iterations(data)
    cells = defaultdict(list)
    busy = defaultdict(list)
    for b in rows:
        writer, args = parse_name(b["run_name"])
        if b["run_name"].startswith("BM_SwitchBusy/"):
            busy[(writer, args["vcpus"], args["sites"])].append(b)
        else:
            cells[(writer, args["vcpus"], args["sites"])].append(b)
    def med(key, counter):
        return percentile([b[counter] for b in cells[key]], 0.5) if key in cells else None
    keys = sorted({(v, s) for (_, v, s) in cells}, key=lambda k: (k[1], k[0]))
    out = []
    for vcpus, sites in keys:
        stop, batch = ("stop", vcpus, sites), ("batch", vcpus, sites)
        out.append([vcpus, sites, fmt(med(stop, "med_us")), fmt(med(stop, "p99_us")),
                    fmt(med(batch, "med_us")), fmt(med(batch, "p99_us")),
                    ratio(med(batch, "med_us"), med(stop, "med_us"))])
    text = ("### Blackout of one group switch (switch_blackout; baseline: the stop-machine writer)\n\n"
            "µs during which a vCPU cannot run the group's ops, per switch: the median and p99 of "
            "each row's switches. Yielding vCPUs, interchangeable groups.\n\n"
            + table(["vCPUs", "sites", "stop median µs", "stop p99 µs", "batch median µs",
                     "batch p99 µs", "batch / stop (median)"], out))
    if busy:
        text += "\n\n" + switch_busy(busy)
    return text, errors, cells


def switch_busy(busy):
    """The busy rows: stop-machine against stopless, p50 / p99 of each row's own samples (the
    median over repetitions when there are several)."""
    def get(key, counter):
        v = [b[counter] for b in busy.get(key, []) if counter in b]
        return percentile(v, 0.5) if v else None
    def pair(key, name):
        return f"{fmt(get(key, name + '_med_us'))} / {fmt(get(key, name + '_p99_us'))}"
    out = []
    for vcpus, sites in sorted({k[1:] for k in busy}, key=lambda k: (k[1], k[0])):
        stop, stopless = ("stop", vcpus, sites), ("stopless", vcpus, sites)
        for writer, key in (("stop", stop), ("stopless", stopless)):
            if key not in busy:
                continue
            out.append([vcpus, sites, writer, pair(key, "wall"), pair(key, "commit"),
                        f"{fmt(get(key, 'med_us'))} / {fmt(get(key, 'p99_us'))}",
                        fmt(get(key, "waits")), pair(key, "wait"), pair(key, "stall"),
                        pair(key, "gap"), pair(key, "gap_raw")])
        if stop in busy and stopless in busy:
            out.append([vcpus, sites, "stopless / stop (p99)",
                        ratio(get(stopless, "wall_p99_us"), get(stop, "wall_p99_us")),
                        ratio(get(stopless, "commit_p99_us"), get(stop, "commit_p99_us")),
                        ratio(get(stopless, "p99_us"), get(stop, "p99_us")), "",
                        ratio(get(stopless, "wait_p99_us"), get(stop, "wait_p99_us")),
                        ratio(get(stopless, "stall_p99_us"), get(stop, "stall_p99_us")),
                        ratio(get(stopless, "gap_p99_us"), get(stop, "gap_p99_us")), ""])
    notes = []
    for sites in (10, 1000):
        key = ("stopless", 16, sites)
        if key in busy:
            wall, wait = get(key, "wall_p99_us"), get(key, "wait_p99_us")
            commit = get(key, "commit_p99_us")
            commit_text = (f" (commit p99 {fmt(commit)} µs: {'met' if commit <= 1000 else 'MISSED'})"
                           if commit is not None else "")
            notes.append(f"- 16 vCPUs, {sites} sites, stopless: wall p99 {fmt(wall)} µs, target "
                         f"≤ 1 ms: {'met' if wall <= 1000 else 'MISSED'}{commit_text}; wait p99 "
                         f"{fmt(wait)} µs, target ≤ 200 µs: {'met' if wait <= 200 else 'MISSED'}")
    return ("### Stop-machine against stopless, busy vCPUs (switch_blackout; baseline: "
            "stop-machine)\n\n"
            "Groups that are not interchangeable; vCPUs that never yield, and 2 bystander vCPUs "
            "that never touch the group. p50 / p99 in µs. `wall`: switch_groups() as a whole, "
            "timed around the call; `commit`: from the call to the commit "
            "(`SwitchOutcome::elapsed`, without the caller's wait for a CPU once the call drops "
            "its real-time priority); `blackout`: the engine's; `wait`: a site call of the group "
            "that overlapped a switch (`waits` calls); `stall`: per switch, the longest stall of "
            "a vCPU calling the group; `gap`: per switch, the longest stall of a bystander. Net "
            "of each thread's run-queue wait, except `gap raw`.\n\n"
            + table(["vCPUs", "sites", "writer", "wall", "commit", "blackout", "waits", "wait",
                     "stall", "gap", "gap raw"], out)
            + ("\n\n" + "\n".join(notes) if notes else ""))


def lock_throughput(data):
    rows, errors = iterations(data)
    cells = defaultdict(list)
    fairness = defaultdict(list)
    for b in rows:
        lock, args = parse_name(b["run_name"])
        key = (lock, args["vcpus"], args["preempt"], args.get("outside", 48))
        cells[key].append(b["ops_per_s"])
        fairness[key].append(b["fairness"])
    locks = [l for l in ("native", "pv", "mutex", "tas") if any(k[0] == l for k in cells)]
    shapes = sorted({k[1:] for k in cells}, key=lambda s: (s[2], s[0], s[1]))
    out = []
    for vcpus, preempt, outside in shapes:
        base = cells.get(("mutex", vcpus, preempt, outside))
        base_med = percentile(base, 0.5) if base else None
        row = [vcpus, "yes" if preempt else "no", "saturated" if outside < 400 else "moderate"]
        for lock in locks:
            v = cells.get((lock, vcpus, preempt, outside))
            if not v:
                row.append("–")
                continue
            m = percentile(v, 0.5)
            row.append(f"{fmt(m)} ({ratio(m, base_med)}, fair {fmt(percentile(fairness[(lock, vcpus, preempt, outside)], 0.5))})")
        out.append(row)
    text = ("### Lock throughput (lock_throughput; baseline: std::mutex)\n\n"
            "Acquisitions per second of one lock by all vCPUs: median over the repetitions, then "
            "(ratio to std::mutex, fairness = max/min per-vCPU share).\n\n"
            + table(["vCPUs", "preempted", "lock load"] + locks, out))
    return text, errors, cells


def shootdown_latency(data):
    rows, errors = iterations(data)
    cells = defaultdict(list)
    for b in rows:
        variant, args = parse_name(b["run_name"])
        cells[(variant, args["targets"], args["preempted"])].append(b)
    out = []
    for targets, preempted in sorted({k[1:] for k in cells}, key=lambda k: (k[1], k[0])):
        def med(variant, counter):
            v = cells.get((variant, targets, preempted))
            return percentile([b[counter] for b in v], 0.5) if v else None
        out.append([targets, "yes" if preempted else "no", fmt(med("native", "med_us")),
                    fmt(med("native", "p99_us")), fmt(med("pv", "med_us")), fmt(med("pv", "p99_us")),
                    ratio(med("pv", "med_us"), med("native", "med_us"))])
    text = ("### TLB shootdown latency (shootdown_latency; baseline: native)\n\n"
            "µs for one shootdown of 8 pages: median and p99 of each repetition's 1000 "
            "shootdowns, then the median over repetitions.\n\n"
            + table(["targets", "one preempted", "native median µs", "native p99 µs",
                     "pv median µs", "pv p99 µs", "pv / native (median)"], out))
    return text, errors


def module_cost(data):
    rows, errors = iterations(data)
    cells = defaultdict(list)
    for b in rows:
        name = b["run_name"].split("/")[0]
        _, args = parse_name(b["run_name"])
        cells[(name,) + tuple(sorted(args.items()))].append(b)

    def med(name, counter, **args):
        v = cells.get((name,) + tuple(sorted(args.items())))
        return percentile([b[counter] for b in v], 0.5) if v else None

    # Google Benchmark writes an inverted rate in seconds.
    def ns(obj, variant):
        v = med("BM_Site", "ns_per_op", object=obj, variant=variant)
        return None if v is None else v * 1e9

    sites = [[variant, fmt(ns(0, v)), fmt(ns(1, v)), ratio(ns(1, v), ns(0, v))]
             for v, variant in ((0, "inline"), (1, "call"))]
    load10 = med("BM_Load", "load_p50_us", sites=10)
    load1000 = med("BM_Load", "load_p50_us", sites=1000)
    per_site = None if load10 is None or load1000 is None else (load1000 - load10) / 990
    loads = [[n, fmt(med("BM_Load", "load_p50_us", sites=n)),
              fmt(med("BM_Load", "load_p99_us", sites=n))] for n in (10, 1000)]
    switches = [[m, fmt(med("BM_Switch", "sites", modules=m)),
                 fmt(med("BM_Switch", "switch_p50_us", modules=m)),
                 fmt(med("BM_Switch", "switch_p99_us", modules=m)),
                 fmt(med("BM_Switch", "blackout_p50_us", modules=m)),
                 fmt(med("BM_Switch", "blackout_p99_us", modules=m))] for m in (0, 10)]
    text = ("### Sites in shared objects (module_cost)\n\n"
            "One op at a site, ns (median over repetitions); baseline: the program's own site.\n\n"
            + table(["variant", "program ns", "module ns", "module / program"], sites)
            + "\n\nEngine::load_module() of a module, µs (p50 and p99 of 200 loads); the patching "
            f"cost per site is the difference over 990 sites: {fmt(per_site)} µs.\n\n"
            + table(["sites", "load p50 µs", "load p99 µs"], loads)
            + "\n\nA stopless switch of the op's group, no vCPU running, with no module or ten "
            "modules of 100 sites loaded: call to commit and the writing (blackout), µs.\n\n"
            + table(["modules", "sites", "switch p50", "switch p99", "blackout p50",
                     "blackout p99"], switches))
    return text, errors


def trigger_reaction(data):
    rows, errors = iterations(data)
    out = []
    for b in rows:
        parts = [p for p in b["run_name"].split("/")[1:] if ":" not in p and p != "manual_time"]
        vcpus, interval_us = int(parts[0]), int(parts[1])
        bound = 2 * interval_us + b["blackout_med_us"]
        out.append([vcpus, fmt(interval_us / 1000), fmt(b["med_us"]), fmt(b["p99_us"]),
                    fmt(b["poll_med_us"]), fmt(b["switch_med_us"]), fmt(b["blackout_med_us"]),
                    ratio(b["med_us"], bound), int(b["over_bound"])])
    out.sort(key=lambda r: (r[0], float(r[1].replace(",", ""))))
    text = ("### Trigger reaction (trigger_reaction; baseline: two polling intervals plus the "
            "blackout)\n\n"
            "µs from a reading that crosses a threshold to the committed switch of spinlock and "
            "tlb: median and p99 of each row's crossings, and the median of its parts.\n\n"
            + table(["vCPUs", "interval ms", "median µs", "p99 µs", "poll wait µs", "switch µs",
                     "blackout µs", "median / bound", "samples over bound"], out))
    return text, errors


PHASES = ("dedicated1", "oversub", "dedicated2")
LOAD_NAMES = {800: "lock free between bursts", 48: "saturated lock"}


def adaptive_phases(data):
    """One table per load (the `outside` argument); returns the text, the errors and, per load,
    each lock's medians (for the plots)."""
    rows, errors = iterations(data)
    cells = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for b in rows:
        lock, args = parse_name(b["run_name"])
        outside = args.get("outside", 0)
        for counter in PHASES + ("overall", "switches", "lag_oversub_ms", "lag_dedicated2_ms",
                                 "switch_oversub_ms", "switch_dedicated2_ms",
                                 "host_realtime") + tuple("seconds_" + p for p in PHASES):
            if counter in b and not (counter.startswith(("lag_", "switch_")) and b[counter] < 0):
                cells[outside][lock][counter].append(b[counter])
    sections, meds = [], {}
    for outside in sorted(cells, reverse=True):
        text, med = adaptive_load(outside, cells[outside])
        sections.append(text)
        meds[outside] = med
    intro = ("### Adaptive against every static choice (adaptive_phases; baseline: the best static "
             "lock of each column)\n\n"
             "Acquisitions per second of one lock, per phase (2 vCPUs dedicated, 16 vCPUs "
             "oversubscribed with preemption, 2 dedicated again) and over the whole run: median "
             "over the repetitions, then the ratio to the best static lock in that column. "
             "`switches`: switches the trigger loop committed per run; `lag`: from the start of "
             "the phase to the commit of adaptive's switch, median over the runs; `switch`: that "
             "switch alone, from the loop's decision to the commit. `adaptive` switches with the "
             "default writer (stop-machine), `adaptive_stopless` with the stopless writer. One "
             "table per "
             "load: `outside` multiply-adds between acquisitions.")
    return "\n\n".join([intro] + sections), errors, meds


def adaptive_load(outside, cells):
    statics = [l for l in ("native", "pv", "mutex", "tas") if l in cells]
    med = {l: {c: percentile(v, 0.5) for c, v in cells[l].items()} for l in cells}
    out = []
    for lock in statics + [l for l in ("adaptive", "adaptive_stopless") if l in cells]:
        row = [lock]
        for counter in PHASES + ("overall",):
            best = max((med[l][counter] for l in statics), default=None)
            row.append(f"{fmt(med[lock][counter])} ({ratio(med[lock][counter], best)})")
        row.append(fmt(med[lock].get("switches")))
        row += [fmt(med[lock].get(f"lag_{p}_ms")) for p in PHASES[1:]]
        row += [fmt(med[lock].get(f"switch_{p}_ms")) for p in PHASES[1:]]
        out.append(row)
    notes = []
    if any(v == 0 for l in cells.values() for v in l.get("host_realtime", [])):
        notes.append("- the simulated hypervisor could not run SCHED_FIFO in some runs, so it "
                     "preempted less often than its schedule says")
    if "adaptive" in med and statics:
        # The phases' lengths (equal in runs that predate the counters).
        known = all("seconds_" + p in med["adaptive"] for p in PHASES)
        seconds = [med["adaptive"]["seconds_" + p] if known else 1.0 for p in PHASES]
        lengths = (f"phases of {', '.join(f'{x:g}' for x in seconds)} s" if known
                   else "phases of equal length")
        best_run = 0.0
        for counter, length in zip(PHASES, seconds):
            best = max(statics, key=lambda l: med[l][counter])
            best_run += med[best][counter] * length / sum(seconds)
            r = med["adaptive"][counter] / med[best][counter] if med[best][counter] else 0
            notes.append(f"- {counter}: adaptive / best static ({best}) = {r:.3g}, target >= 0.9: "
                         f"{'met' if r >= 0.9 else 'MISSED'}")
        worst = min(statics, key=lambda l: med[l]["overall"])
        w = med[worst]["overall"]
        r = med["adaptive"]["overall"] / w if w else 0
        notes.append(f"- whole run: adaptive / worst static ({worst}) = {r:.3g}, target >= 3: "
                     f"{'met' if r >= 3 else 'MISSED'}. The best static lock of each phase in turn "
                     f"would be {best_run / w if w else 0:.3g}× the worst here, with {lengths}: the "
                     f"ceiling for any lock that is no faster than the best static in each phase.")
    if "adaptive" in med and "adaptive_stopless" in med:
        lag = [med[l].get("lag_oversub_ms") for l in ("adaptive", "adaptive_stopless")]
        took = [med[l].get("switch_oversub_ms") for l in ("adaptive", "adaptive_stopless")]
        notes.append(f"- into oversub, lag to commit: stop-machine {fmt(lag[0])} ms, stopless "
                     f"{fmt(lag[1])} ms ({ratio(lag[1], lag[0])}); the switch alone: "
                     f"{fmt(took[0])} ms against {fmt(took[1])} ms ({ratio(took[1], took[0])})")
    heading = f"#### outside:{outside}" + (f" ({LOAD_NAMES[outside]})" if outside in LOAD_NAMES
                                           else "")
    return (heading + "\n\n"
            + table(["lock"] + list(PHASES) + ["overall", "switches"]
                    + [f"lag {p} ms" for p in PHASES[1:]]
                    + [f"switch {p} ms" for p in PHASES[1:]], out)
            + ("\n\n" + "\n".join(notes) if notes else "")), med


def plot_phases(results, outside, med):
    locks = [l for l in ("native", "pv", "mutex", "tas", "adaptive", "adaptive_stopless")
             if l in med]
    name = f"adaptive_phases_outside{outside}"
    lines = ["# lock " + " ".join(PHASES)]
    for lock in locks:
        lines.append(lock + " " + " ".join(str(max(med[lock][p], 1)) for p in PHASES))
    columns = ", ".join(f"'' using {i + 2} title '{p}'" if i else
                        f"'{name}.ops.dat' using 2:xtic(1) title '{p}'"
                        for i, p in enumerate(PHASES))
    load = f" ({LOAD_NAMES[outside]})" if outside in LOAD_NAMES else ""
    return gnuplot(results, name, (
        f"set title 'Throughput per phase for each lock, outside:{outside}{load} (median)'\n"
        "set ylabel 'acquisitions per second'\nset logscale y\nset style data histograms\n"
        "set style histogram clustered gap 1\nset style fill solid 0.8 border -1\n"
        f"plot {columns}\n"), {"ops": lines})


# ---- plots --------------------------------------------------------------------------------------

def gnuplot(results, name, script, datasets):
    """Writes each dataset as <name>.<key>.dat and runs the gnuplot script; returns the SVG path."""
    for key, lines in datasets.items():
        with open(os.path.join(results, f"{name}.{key}.dat"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    svg = os.path.join(results, name + ".svg")
    full = (f"set terminal svg size 900,520 dynamic font 'sans,12'\nset output '{svg}'\n"
            "set grid\nset key outside right\n" + script)
    try:
        subprocess.run(["gnuplot"], input=full, text=True, check=True, cwd=results)
    except FileNotFoundError as e:
        raise ReportError("gnuplot: not found; install it (bench/run-all does) or pass "
                          "--no-plots") from e
    return svg


def plot_blackout(results, cells):
    vcpus = sorted({k[1] for k in cells})
    sites = sorted({k[2] for k in cells})
    data = {}
    for writer in ("stop", "batch"):
        for s in sites:
            lines = []
            for v in vcpus:
                if (writer, v, s) in cells:
                    lines.append(f"{v} {percentile([b['med_us'] for b in cells[(writer, v, s)]], 0.5)}")
            data[f"{writer}_{s}"] = lines
    plots = ", ".join(f"'blackout.{w}_{s}.dat' using 1:2 with linespoints title '{w}, {s} sites'"
                      for w in ("stop", "batch") for s in sites)
    return gnuplot(results, "blackout", (
        "set title 'Blackout of one group switch (median)'\nset xlabel 'vCPUs (2 CPUs)'\n"
        "set ylabel 'µs'\nset logscale xy\nset xtics (1,2,4,8,16)\n"
        f"plot {plots}\n"), data)


def plot_lock_throughput(results, cells):
    locks = [l for l in ("native", "pv", "mutex", "tas") if any(k[0] == l for k in cells)]
    data = {}
    for lock in locks:
        for preempt in (0, 1):
            lines = []
            for v in sorted({k[1] for k in cells}):
                vals = cells.get((lock, v, preempt, 48))
                if vals:
                    lines.append(f"{v} {max(percentile(vals, 0.5), 1)}")
            data[f"{lock}_{preempt}"] = lines
    plots = ", ".join(
        f"'lock_throughput.{l}_{p}.dat' using 1:2 with linespoints dt {1 if p else 2} "
        f"title '{l}{', preempted' if p else ''}'" for l in locks for p in (1, 0))
    return gnuplot(results, "lock_throughput", (
        "set title 'Lock throughput against vCPUs on 2 CPUs (saturated lock, median)'\n"
        "set xlabel 'vCPUs'\nset ylabel 'acquisitions per second'\nset logscale xy\n"
        f"set xtics (1,2,8,16)\nplot {plots}\n"), data)


# ---- main ---------------------------------------------------------------------------------------

def machine(results, data):
    ctx = (data or {}).get("context", {})
    lines = []
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            m = re.search(r"^model name\s*:\s*(.*)$", f.read(), re.M)
            model = m.group(1) if m else ""
    except OSError:
        pass
    lines.append(f"- Machine: {ctx.get('num_cpus', '?')} CPUs, {model or 'unknown model'}, "
                 f"{os.uname().sysname} {os.uname().release}; load average at the start "
                 f"{', '.join(f'{x:.2f}' for x in ctx.get('load_avg', [])) or 'unknown'}.")
    if ctx.get("date"):
        lines.append(f"- Started: {ctx['date']}.")
    return "\n".join(lines)


def replace_blocks(path, text, blocks):
    """Replaces the text between each block's markers; every block must have its markers, once
    each and in order, or nothing is replaced."""
    spans, missing = {}, []
    for name in blocks:
        begin, end = markers(name)
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            missing.append(f"{begin} ... {end}")
            continue
        spans[name] = (text.index(begin) + len(begin), text.index(end))
    if missing:
        raise ReportError(f"{path}: each generated block needs its two marker lines, once and in "
                          "order; add these where the tables belong:\n  " + "\n  ".join(missing))
    # From the last block to the first, so that the earlier spans stay valid.
    for name, (start, stop) in sorted(spans.items(), key=lambda item: item[1][0], reverse=True):
        text = text[:start] + "\n" + blocks[name] + "\n" + text[stop:]
    return text


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", help="directory with <program>.json files")
    ap.add_argument("--readme", help="markdown file whose generated blocks are replaced")
    ap.add_argument("--markdown", help="write the generated markdown to this file")
    ap.add_argument("--command", default="bench/run-all", help="the command to record")
    ap.add_argument("--commit", default="", help="the commit measured")
    ap.add_argument("--no-plots", action="store_true", help="do not run gnuplot")
    args = ap.parse_args()
    if not os.path.isdir(args.results):
        raise ReportError(f"{args.results}: no such directory")
    if args.readme and not os.path.isfile(args.readme):
        raise ReportError(f"{args.readme}: no such file (--readme replaces the generated blocks "
                          "of a file that exists)")
    if args.markdown and not os.path.isdir(os.path.dirname(os.path.abspath(args.markdown))):
        raise ReportError(f"{args.markdown}: its directory does not exist")
    # gnuplot runs inside the results directory, so the paths it is given must not be relative.
    args.results = os.path.abspath(args.results)

    sections, errors, plots = {}, [], defaultdict(list)
    first = None
    for program in PROGRAMS:
        data = load(args.results, program)
        if data is None:
            sections[program] = f"### {program}\n\nNot run: no {program}.json."
            continue
        # The machine line describes the run's start: the program that began first, whatever
        # order the tables are in. ISO 8601 dates in one time zone sort as text.
        date = data.get("context", {}).get("date", "")
        if first is None or (date and date < first.get("context", {}).get("date", date)):
            first = data
        if program == "site_cost":
            sections[program] = site_cost(data)
        elif program == "stop_blackout":
            text, errs = stop_blackout(data)
            sections[program] = text
            errors += errs
        elif program == "switch_blackout":
            text, errs, cells = switch_blackout(data)
            sections[program] = text
            errors += errs
            if not args.no_plots and cells:
                plots[program].append(plot_blackout(args.results, cells))
        elif program == "lock_throughput":
            text, errs, cells = lock_throughput(data)
            sections[program] = text
            errors += errs
            if not args.no_plots and cells:
                plots[program].append(plot_lock_throughput(args.results, cells))
        elif program == "shootdown_latency":
            text, errs = shootdown_latency(data)
            sections[program] = text
            errors += errs
        elif program == "module_cost":
            text, errs = module_cost(data)
            sections[program] = text
            errors += errs
        elif program == "trigger_reaction":
            text, errs = trigger_reaction(data)
            sections[program] = text
            errors += errs
        elif program == "adaptive_phases":
            text, errs, meds = adaptive_phases(data)
            sections[program] = text
            errors += errs
            if not args.no_plots:
                plots[program] += [plot_phases(args.results, outside, med)
                                   for outside, med in meds.items() if med]

    # Each program's plots follow its tables; image paths are relative to the file written.
    target = args.readme or args.markdown
    base = os.path.dirname(os.path.abspath(target)) if target else os.getcwd()
    for program, paths in plots.items():
        if not paths:
            continue
        sections[program] += "\n\n" + "\n".join(
            f"![{os.path.basename(p)}]({os.path.relpath(p, base)})" for p in paths)

    head = [f"Generated by `{args.command}`" + (f" on commit {args.commit}" if args.commit else "")
            + ". Each program also prints its own summary, with the issue targets and a verdict, "
            "into the results directory (`<program>.txt`).", "", machine(args.results, first)]
    if errors:
        head += ["", "Rows that failed:", ""] + [f"- {e}" for e in errors]
    blocks = {"run": "\n".join(head)}
    blocks.update((program, sections[program]) for program in PROGRAMS)

    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write("\n\n".join(blocks.values()) + "\n")
    if args.readme:
        with open(args.readme, encoding="utf-8") as f:
            text = f.read()
        text = replace_blocks(args.readme, text, blocks)
        with open(args.readme, "w", encoding="utf-8") as f:
            f.write(text)
    if not args.markdown and not args.readme:
        sys.stdout.write("\n\n".join(blocks.values()) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ReportError as e:
        print(f"bench/report.py: {e}", file=sys.stderr)
        sys.exit(2)
    except subprocess.CalledProcessError as e:
        print(f"bench/report.py: gnuplot failed ({e}); its own message, if any, is above",
              file=sys.stderr)
        sys.exit(2)
