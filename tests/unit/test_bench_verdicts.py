"""Every verdict in the benchmark's table comes from a check that can fail:
the same rows read from good figures say met, from bad ones MISSED."""

from tests.bench.report import build_rows


def results(good: bool) -> dict:
    """The figures each verdict reads, on the good or the bad side of its target."""
    return {
        "ceiling": {"batched": {"tasks_per_s": 10_000.0}},
        "W1": {
            "tasks_per_s": 8_000.0 if good else 2_000.0,
            "tasks": 10_000,
            "job_logs": 10_000 if good else 0,
            "sql_isolated": {"statements_per_task": 0.07 if good else 0.5},
        },
        "W2": {"efficiency": 0.96 if good else 0.5, "drain_s": 2.1},
        "W5": {"rss_growth_mb": 5.0 if good else 50.0, "checkpoint": 10_000, "tasks": 100_000},
        "W11": {
            "global": {"tasks_per_s": 7_000.0, "ratio_to_w1": 0.9 if good else 0.3},
            "rate": {"tasks_per_s": 7_000.0, "ratio_to_w1": 0.95 if good else 0.3},
            "cancel": {"p50_ms": 5.0, "p99_ms": 9.0 if good else 5_000.0, "max_ms": 9.0},
        },
        "W12": {
            "cpu_1_process": {"tasks_per_s": 400.0},
            "cpu_2_processes": {"tasks_per_s": 760.0 if good else 420.0},
            "cpu_speedup": 1.9 if good else 1.05,
        },
    }


def verdicts(good: bool) -> dict[tuple[str, str], str]:
    return {(row.workload, row.figure): row.verdict for row in build_rows(results(good)) if row.target}


def test_each_checked_figure_flips_between_met_and_missed():
    good, bad = verdicts(True), verdicts(False)
    assert good.keys() == bad.keys() and len(good) >= 9
    assert set(good.values()) == {"met"}, good
    assert set(bad.values()) == {"MISSED"}, bad
