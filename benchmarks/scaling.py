"""Scaling benchmark: every shipped trace through the default policy, `--profile responsive` and fixed pools.

    python benchmarks/scaling.py                 # the table (printed, and written to README-scaling.md)
    python benchmarks/scaling.py --variants 3    # also check the targets on traces like the shipped ones
    python benchmarks/scaling.py --variants 8 --variants-from 100   # ... on other random ones
    python benchmarks/scaling.py --make-traces   # regenerate benchmarks/traces/*.csv (seeded, reproducible)

Each configuration is parsed by the `rq-orchestrator simulate` command itself,
so the benchmark runs exactly what the command line would.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rq_orchestrator.cli.simulate import settings_from_options, simulate
from rq_orchestrator.policy.simulator import DEFAULT_SPAWN_DELAY, Result, TraceJob, read_trace, run_simulation

HERE = Path(__file__).resolve().parent
TRACES = HERE / "traces"
README = HERE / "README-scaling.md"
MARKER = "## Scaling benchmark"  # the generated part of README starts here; what precedes it is kept
MAX_WORKERS = 8
RESPONSIVE = ["--profile", "responsive", "--min-workers", "1", "--max-workers", str(MAX_WORKERS)]
CONFIGS: list[tuple[str, list[str]]] = [
    ("default", []),
    ("responsive", RESPONSIVE),
    *((f"fixed {n}", ["--num-workers", str(n)]) for n in range(1, MAX_WORKERS + 1)),
]

# One option at a time, from the seed's rule to the responsive profile (all 1 to 8 workers).
LADDER: list[tuple[str, list[str]]] = [
    ("seed rule", ["--min-workers", "1"]),
    ("+ --scale-down-delay 30", ["--min-workers", "1", "--scale-down-delay", "30"]),
    ("+ --max-queue-wait 0.5", ["--min-workers", "1", "--max-queue-wait", "0.5"]),
    ("+ --max-step 8", ["--min-workers", "1", "--max-queue-wait", "0.5", "--max-step", "8"]),
    ("+ --scale-on queue-wait (= responsive)", RESPONSIVE),
    ("responsive + --scale-down-delay 30", [*RESPONSIVE, "--scale-down-delay", "30"]),
    ("responsive, --min-workers 0", [*RESPONSIVE, "--min-workers", "0"]),
]


# -- traces -----------------------------------------------------------------------
def seed_jobs(interval: float = 0.5, duration: float = 1.0, span: float = 120.0) -> list[TraceJob]:
    """One job every `interval` seconds for `span` seconds (the seed's load)."""
    return [TraceJob(round(i * interval, 3), duration) for i in range(math.ceil(span / interval))]


def poisson_seed_jobs(seed: int, rate: float = 2.0, duration: float = 1.0, span: float = 120.0) -> list[TraceJob]:
    """The seed's load with random (Poisson) arrivals."""
    rng = random.Random(seed)
    return [TraceJob(t, duration) for t in _poisson_times(rng, lambda _: rate, rate, span)]


def burst_jobs(count: int = 300, duration: float = 1.0) -> list[TraceJob]:
    """`count` jobs at once, then silence."""
    return [TraceJob(0.0, duration) for _ in range(count)]


def ramp_jobs(seed: int, base: float = 0.2, peak: float = 2.8, span: float = 3600.0,
              mean: float = 1.0) -> list[TraceJob]:
    """A daily-like hour: the rate rises from `base` to `base + peak` jobs/s and falls back; lognormal lengths."""
    rng = random.Random(seed)
    sigma = 0.5

    def rate(t: float) -> float:
        return base + peak * math.sin(math.pi * t / span) ** 2

    times = _poisson_times(rng, rate, base + peak, span)
    return [TraceJob(t, round(rng.lognormvariate(math.log(mean) - sigma**2 / 2, sigma), 3)) for t in times]


def mixed_jobs(seed: int, rate: float = 1.0, span: float = 1200.0, long_share: float = 0.05) -> list[TraceJob]:
    """Poisson arrivals; `long_share` of the jobs take 60 s, the rest 0.2 s."""
    rng = random.Random(seed)
    times = _poisson_times(rng, lambda _: rate, rate, span)
    return [TraceJob(t, 60.0 if rng.random() < long_share else 0.2) for t in times]


def _poisson_times(rng: random.Random, rate: Callable[[float], float], top: float, span: float) -> list[float]:
    """Arrival times of a Poisson process of rate `rate(t)` <= `top` over [0, span) (by thinning)."""
    times, t = [], 0.0
    while True:
        t += rng.expovariate(top)
        if t >= span:
            return times
        if rng.random() < rate(t) / top:
            times.append(round(t, 3))


SHIPPED: dict[str, Callable[[], list[TraceJob]]] = {
    "seed": seed_jobs,
    "burst": burst_jobs,
    "ramp": lambda: ramp_jobs(seed=1),
    "mixed": lambda: mixed_jobs(seed=2),
}


def variants(count: int, first: int = 0) -> dict[str, tuple[str, list[TraceJob]]]:
    """Traces like the shipped ones (name -> (kind, jobs)): other rates, lengths and random seeds.

    Variant i (from `first`) draws its random traces from seeds derived from i, so another `first`
    gives other Poisson, ramp and mixed traces (the regular seed loads and bursts cycle through four shapes).
    """
    found: dict[str, tuple[str, list[TraceJob]]] = {}
    for i in range(first, first + count):
        interval = (0.4, 0.6, 0.75, 0.3)[i % 4]
        found[f"seed every {interval} s"] = ("seed", seed_jobs(interval=interval))
        found[f"seed poisson #{i + 1}"] = ("seed", poisson_seed_jobs(seed=100 + i))
        size, length = ((200, 2.0), (500, 0.5), (100, 1.0), (400, 1.5))[i % 4]
        found[f"burst {size}x{length} s"] = ("burst", burst_jobs(size, length))
        found[f"ramp #{i + 2} peak {2 + i % 3}"] = ("ramp", ramp_jobs(seed=i + 2, peak=2.0 + i % 3))
        rate = 0.8 + 0.2 * (i % 3)
        found[f"mixed #{i + 3} rate {rate:.1f}"] = ("mixed", mixed_jobs(seed=i + 3, rate=rate))
    return found


def make_traces() -> None:
    from rq_orchestrator.policy.simulator import write_trace

    TRACES.mkdir(exist_ok=True)
    for name, build in SHIPPED.items():
        write_trace(TRACES / f"{name}.csv", build())
        print(f"wrote {TRACES / name}.csv")


# -- running ----------------------------------------------------------------------
def run(jobs: list[TraceJob], args: list[str]) -> Result:
    """Simulate `jobs` under the options `args`, parsed by the simulate command itself (its --spawn-delay too)."""
    params = simulate.make_context("simulate", ["--trace", "-", *args]).params
    settings = settings_from_options(params)
    return run_simulation(jobs, settings, params["utilization_window"], params["spawn_delay"])


def run_all(jobs: list[TraceJob]) -> dict[str, Result]:
    return {name: run(jobs, args) for name, args in CONFIGS}


# -- targets ------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    trace: str
    target: str
    ok: bool
    detail: str


def check(trace: str, kind: str, results: dict[str, Result]) -> list[Check]:
    checks = check_responsive(trace, kind, results)
    if kind == "seed" and trace == "seed":
        checks += check_default_on_seed(results["default"])
    return checks


def check_responsive(trace: str, kind: str, results: dict[str, Result]) -> list[Check]:
    ours = results["responsive"]
    fixed = {int(name.split()[1]): r for name, r in results.items() if name.startswith("fixed")}
    checks = []
    if fixed[MAX_WORKERS].wait_p95_s <= 1.0:
        enough = min(n for n, r in fixed.items() if r.wait_p95_s <= 1.0)
        cheapest = fixed[enough].worker_seconds
        checks.append(Check(trace, "responsive: p95 <= 1 s with fewer worker-seconds than the smallest such fixed pool",
                            ours.wait_p95_s <= 1.0 and ours.worker_seconds < cheapest,
                            f"p95 {ours.wait_p95_s:.2f} s, {ours.worker_seconds:.0f} ws vs fixed {enough}: "
                            f"{cheapest:.0f} ws"))
    if kind == "burst":
        limit = 1.1 * fixed[MAX_WORKERS].makespan_s
        checks.append(Check(trace, f"responsive: makespan <= 110% of fixed {MAX_WORKERS}'s", ours.makespan_s <= limit,
                            f"{ours.makespan_s:.1f} s vs {fixed[MAX_WORKERS].makespan_s:.1f} s"))
        back = ours.back_to_min_s
        checks.append(Check(trace, "responsive: back at the minimum within 60 s of the queue emptying",
                            back is not None and back <= 60, f"{back} s"))
    beaten = [n for n, r in fixed.items() if dominates(r, ours)]
    checks.append(Check(trace, "responsive: no fixed pool at least as good on p95 and worker-seconds, better on one",
                        not beaten, f"dominated by fixed {beaten}" if beaten else "none"))
    if kind == "seed" and trace == "seed":
        checks.append(Check(trace, "responsive: zero reversals", ours.reversals == 0, f"{ours.reversals}"))
    return checks


def dominates(a: Result, b: Result) -> bool:
    better_or_equal = a.wait_p95_s <= b.wait_p95_s and a.worker_seconds <= b.worker_seconds
    return better_or_equal and (a.wait_p95_s < b.wait_p95_s or a.worker_seconds < b.worker_seconds)


def check_default_on_seed(result: Result) -> list[Check]:
    sizes = [(s.t, s.workers) for s in result.samples]
    early = max(n for t, n in sizes if t <= 30)
    steady = [n for t, n in sizes if 60 <= t <= 120]
    steady_moves = [m for m in result.moves if 60 <= m[0] <= 120]
    flips = sum(1 for a, b in zip(steady_moves, steady_moves[1:]) if a[1] is not b[1])
    back = result.back_to_min_s
    return [
        Check("seed", "default: at least 4 workers within 30 s", early >= 4, f"{early} workers by 30 s"),
        Check("seed", "default: settles at 4 to 5", 4 <= min(steady) and max(steady) <= 5,
              f"{min(steady)}-{max(steady)} from 60 s to 120 s"),
        Check("seed", "default: at most one reversal while steady", flips <= 1, f"{flips}"),
        Check("seed", "default: back at the minimum within 60 s after the load", back is not None and back <= 60,
              f"{back} s"),
    ]


# -- output -------------------------------------------------------------------------
COLUMNS = ("wait_p50_s", "wait_p95_s", "wait_max_s", "worker_seconds", "max_workers", "min_workers_seen",
           "reversals", "scale_ups", "scale_downs", "time_to_max_s", "makespan_s", "back_to_min_s")


def table(trace: str, jobs: int, results: dict[str, Result]) -> list[str]:
    lines = [f"### {trace} ({jobs} jobs)", "", "| pool | " + " | ".join(COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    for name, result in results.items():
        metrics = result.metrics()
        cells = ["-" if metrics[c] is None else f"{metrics[c]:g}" for c in COLUMNS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def ladder(traces: dict[str, list[TraceJob]]) -> list[str]:
    """p95 wait, worker-seconds and reversals of each step of LADDER on each trace."""
    lines = ["### Options one at a time", "",
             "p95 wait (s) / worker-seconds / reversals; 1 to 8 workers unless said.", "",
             "| pool | " + " | ".join(traces) + " |", "|---|" + "---:|" * len(traces)]
    for name, args in LADDER:
        cells = []
        for jobs in traces.values():
            r = run(jobs, args)
            cells.append(f"{r.wait_p95_s:.2f} / {r.worker_seconds:.0f} / {r.reversals}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines + [""]


def report(checks: list[Check]) -> list[str]:
    lines = ["| trace | target | met | detail |", "|---|---|---|---|"]
    lines += [f"| {c.trace} | {c.target} | {'yes' if c.ok else '**no**'} | {c.detail} |" for c in checks]
    return lines + [""]


def header() -> list[str]:
    configs = "; ".join(f"{name}: `{' '.join(args) or '(no options)'}`" for name, args in CONFIGS[:2])
    return [
        MARKER,
        "",
        "`python benchmarks/scaling.py` replays each trace of `benchmarks/traces/` with "
        "`rq-orchestrator simulate` (virtual clock, the pool's own policy and bookkeeping) through "
        f"{configs}; and fixed pools of 1 to {MAX_WORKERS} (`--num-workers N`). Pools that grow pay the simulator's "
        f"default spawn delay of {DEFAULT_SPAWN_DELAY:g} s per new worker (above every decision-to-first-job "
        "latency `benchmarks/spawn.py` measured on the real pool: medians 40-61 ms, worst 83 ms); every pool "
        "starts with its minimum ready at t = 0. "
        "Waits are in seconds; worker_seconds is the integral of live workers over the run (until 120 s "
        "after the pool's last job ends).",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--make-traces", action="store_true", help="regenerate the shipped traces and exit")
    parser.add_argument("--variants", type=int, default=0, metavar="N",
                        help="also check the targets on N traces like each shipped one (not written to the file)")
    parser.add_argument("--variants-from", type=int, default=0, metavar="I",
                        help="number the variants from I: other random seeds for the Poisson, ramp and mixed ones")
    args = parser.parse_args(argv)
    if args.make_traces:
        make_traces()
        return 0
    lines, checks = header(), []
    traces = {name: read_trace(TRACES / f"{name}.csv") for name in SHIPPED}
    for name, jobs in traces.items():
        results = run_all(jobs)
        lines += table(name, len(jobs), results)
        checks += check(name, name, results)
    lines += ladder(traces)
    lines += ["### Targets", "", *report(checks)]
    kept = README.read_text().split(MARKER)[0] if README.exists() else ""
    README.write_text(kept + "\n".join(lines))
    print("\n".join(lines))
    for name, (kind, jobs) in variants(args.variants, args.variants_from).items():
        checks_here = check(name, kind, run_all(jobs))
        checks += checks_here
        print("\n".join(report(checks_here)[2:]), end="")
    failed = [c for c in checks if not c.ok]
    print(f"\n{len(checks) - len(failed)} of {len(checks)} targets met")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
