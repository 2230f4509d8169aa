"""The RQ Worker Pool desk view's rows and chart, built from published state without frappe."""

from __future__ import annotations

import time

import pytest

from conftest import wait_until
from rq_orchestrator.rq_orchestrator.doctype.rq_worker_pool.pool_view import (
    history_view, list_rows, page, read_group, read_rows,
)

FAST = ("--scaling-period", "0.2", "--utilization-window", "1")


def group(name, queues, workers=2, lo=1, hi=4, **extra):
    return {"name": name, "queues": queues, "min": lo, "max": hi, "workers": workers, "target": workers, "busy": 1,
            "utilization": 0.4167, "queued": 0, "oldest_wait_s": 0.0, "scale_ups": 1, "scale_downs": 0,
            "last_decision": None, "last_change": None, **extra}


def pool(pid, groups, stale=False, name="pool"):
    return {"key": f"rq:orchestrator:pool:vm:{pid}", "name": name, "host": "vm", "pid": pid, "groups": groups,
            "updated_at": 1000.0, "started_at": 900.0, "age_s": 1.0, "stale": stale,
            **({"stale_reason": "no update for 20 s"} if stale else {})}


EXPIRED = {"key": "rq:orchestrator:pool:other:77", "stale": True, "stale_reason": "its state expired",
           "last_seen": 990.0}


def test_one_row_per_group_and_one_for_an_expired_pool():
    waiting = group("long-default-short", ["b:long", "b:default", "b:short"], workers=1, queued=3, oldest_wait_s=4.2,
                    last_decision={"action": "up", "target": 2, "reason": "utilization 0.61 > 0.50", "at": 998.0})
    rows = list_rows([pool(10, [group("short-default", ["b:short", "b:default"]), waiting]), EXPIRED])
    assert [r["name"] for r in rows] == ["vm:10:short-default", "vm:10:long-default-short", "other:77"]
    assert len({tuple(r) for r in rows}) == 1  # the same keys in every row, as Frappe's list expects
    first, second, expired = rows
    assert (first["pool"], first["queues"], first["size"], first["utilization"], first["state"]) == (
        "pool/short-default", "short, default", "2 (1–4)", 41.7, "ok")
    assert (second["queues"], second["oldest_wait"], second["oldest_wait_s"]) == ("long, default, short", "4.2s", 4.2)
    assert second["last_decision"] == "up 2, 3.0s ago: utilization 0.61 > 0.50"
    assert (expired["state"], expired["stale_reason"], expired["pid"], expired["workers"]) == (
        "stale", "its state expired", "77", None)


def test_a_group_with_no_worker_left_and_jobs_in_its_window_shows_no_utilization():
    """Busy time over the window / 0 workers is infinite: published as null (JSON has no Infinity), shown as none."""
    from rq_orchestrator.cli.status import group_row
    from rq_orchestrator.master.state import GroupLog, group_figures
    from rq_orchestrator.policy.group import WorkerGroup
    from rq_orchestrator.policy.scaling import ScalingPolicy, ScalingSettings

    scaled = WorkerGroup("default", ("default",), ScalingPolicy(ScalingSettings(0, 4, 0.5)), window=30.0, now=0.0)
    scaled.worker_born(1, 1, 0.0)
    scaled.job_started(1, "j", 1.0)
    scaled.job_ended(1, 5.0)
    scaled.worker_exited(1, 6.0)  # scaled to zero: the job's 4 s are still in the window
    figures = group_figures(scaled, GroupLog(), 7.0)
    assert figures["workers"] == 0 and figures["utilization"] is None
    (row,) = list_rows([pool(12, [group("default", ["default"], workers=0, utilization=None)], name="default")])
    assert row["utilization"] is None
    assert group_row(pool(12, []), group("default", ["default"], utilization=None), False, "ok")[7] == "-"


def test_a_stale_pool_says_why():
    (row,) = list_rows([pool(11, [group("default", ["default"])], stale=True, name="default")])
    assert (row["pool"], row["state"], row["stale_reason"]) == ("default", "stale", "no update for 20 s")


def test_pages_and_the_filters_a_list_click_adds():
    rows = list_rows([pool(p, [group("default", ["default"])], stale=p == 3) for p in range(1, 6)])
    assert [r["pid"] for r in page(rows, None, 1, 2)] == ["2", "3"]
    assert len(page(rows, [], 0, 0)) == 5
    assert [r["pid"] for r in page(rows, {"state": "stale"}, 0, 0)] == ["3"]
    assert [r["pid"] for r in page(rows, '[["RQ Worker Pool", "state", "!=", "stale", false]]', 0, 2)] == ["1", "2"]
    assert page(rows, {"_assign": ["like", "%me%"]}, 0, 0) == []  # a field the rows lack is empty, as unset
    assert len(page(rows, {"owner": ["is", "not set"]}, 0, 0)) == 5


def test_the_filter_bars_comparisons_narrow_the_list():
    """The desk offers >, >=, <, <=, between and is (not) set on the number and time columns."""
    sizes = [group("a", ["a"], workers=1), group("b", ["b"], workers=2), group("c", ["c"], workers=3)]
    rows = list_rows([pool(1, sizes), EXPIRED])
    names = lambda filters: [r["group_name"] for r in page(rows, filters, 0, 0)]  # noqa: E731
    assert names('[["RQ Worker Pool", "workers", ">", "1", false]]') == ["b", "c"]
    assert names({"workers": [">=", 2], "target": ["<", "3"]}) == ["b"]
    assert names({"workers": ["<=", "1"]}) == ["a"]  # the expired pool has no figure: in no range, as SQL's NULL
    assert names({"workers": ["between", ["2", "3"]]}) == ["b", "c"]
    assert names({"workers": ["is", "not set"]}) == [None]
    assert names({"workers": ["is", "set"]}) == ["a", "b", "c"]
    assert names({"utilization": [">", "41.69"]}) == ["a", "b", "c"]
    assert names({"utilization": ["=", 41.7], "workers": ["in", ["2", "3"]]}) == ["b", "c"]
    assert names({"workers": ["=", "2.0"]}) == ["b"]  # numbers as numbers: a click on 0 % sends 0 for 0.0
    with pytest.raises(ValueError, match="two values for 'between'"):
        names({"workers": ["between", 3]})  # the filter bar's Between on a number column sends one value


def test_times_compare_and_a_date_range_covers_its_last_day():
    rows = [{"name": n, "updated_at": t} for n, t in (("early", "2026-12-05 23:59:59"), ("late", "2026-12-06 21:15:00"))]
    assert [r["name"] for r in page(rows, {"updated_at": ["between", ["2026-12-06", "2026-12-06"]]}, 0, 0)] == ["late"]
    assert [r["name"] for r in page(rows, {"updated_at": [">", "2026-12-06 00:00:00"]}, 0, 0)] == ["late"]


def test_a_filter_it_cannot_apply_is_refused_not_ignored():
    rows = list_rows([pool(1, [group("a", ["a"])])])
    with pytest.raises(ValueError, match="cannot filter with 'timespan'"):
        page(rows, {"updated_at": ["timespan", "today"]}, 0, 0)  # no reading of time spans given
    with pytest.raises(ValueError, match="cannot read the timespan 'someday'"):
        page(rows, {"updated_at": ["timespan", "someday"]}, 0, 0, date_ranges=lambda op, value: None)


def test_a_timespan_is_the_range_the_desk_reads_it_as():
    rows = [{"name": n, "updated_at": t} for n, t in (("early", "2026-12-05 23:59:59"), ("late", "2026-12-06 21:15:00"))]
    today = lambda op, value: ["2026-12-06", "2026-12-06"] if (op, value) == ("timespan", "today") else None  # noqa: E731
    assert [r["name"] for r in page(rows, {"updated_at": ["timespan", "today"]}, 0, 0, date_ranges=today)] == ["late"]


def test_the_list_comes_in_the_order_asked():
    sizes = [group("a", ["a"], workers=2), group("b", ["b"], workers=10, hi=12), group("c", ["c"], workers=2)]
    rows = list_rows([pool(1, sizes), EXPIRED])
    order = lambda order_by: [r["group_name"] for r in page(rows, None, 0, 0, order_by)]  # noqa: E731
    assert order("`tabRQ Worker Pool`.`workers` desc") == ["b", "a", "c", None]  # ties keep their place
    assert order("workers asc") == [None, "a", "c", "b"]  # a missing figure first, as MariaDB's NULL
    assert order("workers desc, group_name desc") == ["b", "c", "a", None]
    assert order("`tabRQ Worker Pool`.`no_such_field` desc") == ["a", "b", "c", None]
    assert order("size desc") == ["b", "a", "c", None]  # "10 (1–12)" after "2 (1–4)" as text: by the workers
    by_size = [r["group_name"] for r in page(rows, {"size": [">", 5]}, 0, 0)]  # the desk's first "Workers" field
    assert by_size == ["b"]
    assert [r["group_name"] for r in page(rows, None, 1, 2, "workers desc")] == ["a", "c"]  # ordered, then paged


def test_the_search_boxes_like_filters_narrow_the_list():
    rows = list_rows([pool(1, [group("short-default", ["b:short", "b:default"]), group("long", ["b:long"])])])
    assert [r["pool"] for r in page(rows, {"pool": ["like", "%LONG%"]}, 0, 0)] == ["pool/long"]
    assert [r["pool"] for r in page(rows, '[["RQ Worker Pool", "pool", "not like", "%long%", false]]', 0, 0)] == [
        "pool/short-default"]
    assert [r["pool"] for r in page(rows, {"pool": ["like", "pool/s_ort%"]}, 0, 0)] == ["pool/short-default"]
    assert len(page(rows, {"pool": ["like", "50%"]}, 0, 0)) == 0  # % and _ only are wildcards
    assert [r["pool"] for r in page(rows, {"pool": ["in", "pool/long, pool/other"]}, 0, 0)] == ["pool/long"]


def tick(t, workers, busy=0, queued=0, target=None, group="g"):
    return {"kind": "tick", "t": t, "group": group, "workers": workers, "target": target or workers, "busy": busy,
            "utilization": 0.5, "queued": queued, "oldest_wait_s": 0.0, "action": "hold", "reason": "r"}


def test_history_keeps_each_steps_peak_and_marks_decisions():
    now = 10_000.0
    samples = [tick(now - 5000, 9)]  # older than an hour: left out
    samples += [tick(now - 100 + i, 2, busy=i % 3, queued=10 if i == 37 else 0) for i in range(100)]
    samples.append({**tick(now - 52, 3), "kind": "decision", "action": "up", "reason": "utilization 0.61 > 0.50"})
    view = history_view(samples, now, points=10)
    chart = view["chart"]
    assert len(chart["t"]) == 10 and chart["t"][-1] == now - 1
    assert max(chart["workers"]) == 2 and max(chart["busy"]) == 2
    assert chart["queued"].count(10) == 1  # a one-tick peak survives the thinning
    assert [i for i, d in enumerate(chart["decided"]) if d is not None] == [4] and chart["decided"][4] == 3
    assert view["decisions"] == [{"t": now - 52, "action": "up", "target": 3, "workers": 3, "busy": 0,
                                  "utilization": 0.5, "queued": 0, "oldest_wait_s": 0.0,
                                  "reason": "utilization 0.61 > 0.50"}]


def test_a_quiet_pools_sparse_history_is_drawn_as_steps_on_an_even_time_axis():
    now = 1000.0
    samples = [tick(now - 100, 2), tick(now - 60, 5, busy=4, queued=7), tick(now - 20, 3)]
    chart = history_view(samples, now, points=8)["chart"]
    assert chart["workers"] == [2, 2, 2, 2, 5, 5, 5, 3]
    assert chart["queued"] == [0, 0, 0, 0, 7, 7, 7, 0]
    assert chart["t"][1:3] == [now - 90, now - 80]  # empty steps sit at their own time


def test_no_history_is_an_empty_chart():
    assert history_view([], 100.0) == {"chart": {k: [] for k in ("t", "workers", "busy", "queued", "target",
                                                                 "decided")}, "decisions": []}


def test_a_running_pool_read_from_redis(start_pool, redis):
    pool_process = start_pool("--queue", "a:1-2", "--queue", "b:1", "--name", "view", *FAST)
    rows = wait_until(lambda: [r for r in read_rows(redis) if r["workers"] == 1 and r["state"] == "ok"], 15,
                      "the pool's rows")
    wait_until(lambda: len(read_rows(redis)) == 2, 15, "both groups")
    rows = read_rows(redis)
    assert [r["pool"] for r in rows] == ["view/a", "view/b"]
    assert {r["pid"] for r in rows} == {str(pool_process.pid)}
    time.sleep(0.6)  # a few ticks
    detail = read_group(redis, rows[0]["name"])
    assert detail["group_name"] == "a" and len(detail["chart"]["t"]) >= 2 and detail["decisions"] == []
    assert read_group(redis, "vm:1:nothing") is None
