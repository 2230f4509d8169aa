"""`bench worker-pool-setup` on what frappe-bench's own templates write: supervisor.conf and Procfile.

The files are rendered by the installed frappe-bench package (its renderers
need no Frappe) on a fake bench directory; supervisor's own config reader
(what supervisord runs at start) must accept the rewritten file.
"""

from __future__ import annotations

import configparser
import getpass
import json
import os
import re
import sys
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from rq_orchestrator.cli.group_specs import parse_groups
from rq_orchestrator.commands.bench_setup import left_out_queues, rewrite_procfile, rewrite_supervisor, setup_bench
from rq_orchestrator.infra.errors import BadInput

BENCH = "fakebench"
POOL = f"{BENCH}-frappe-worker-pool"
POOL_ARGS = ["--min-workers", "2", "--max-workers", "8", "--queue", "short,default:1-4", "--queue", "long,default,short:1-2"]
CUSTOM = {"rqo": {"timeout": 600, "background_workers": 3}, "reports": {"timeout": 3000}}
SUPERVISOR = "config/supervisor.conf"

# name: (frappe version or None for the default-worker variant, custom workers, Procfile's skip_schedule)
VARIANTS = {
    "default": (None, {}, False),
    "multi-queue": ("15.55.1", CUSTOM, False),
    "skip-schedule": ("16.0.0-dev", CUSTOM, True),
}


def render_bench(root: Path, variant: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A bench directory with the supervisor.conf and Procfile that frappe-bench writes for ``variant``."""
    from bench.config.procfile import setup_procfile
    from bench.config.supervisor import generate_supervisor_config

    version, workers, skip_schedule = VARIANTS[variant]
    bench = root / BENCH
    for sub in ("sites", "config", "logs"):
        (bench / sub).mkdir(parents=True)
    if version:  # bench enables multi-queue consumption for frappe > 14.18.0
        (bench / "apps/frappe/frappe").mkdir(parents=True)
        (bench / "apps/frappe/frappe/__init__.py").write_text(f'__version__ = "{version}"\n')
    (bench / "sites/common_site_config.json").write_text(json.dumps({"background_workers": 2, "workers": workers}))
    monkeypatch.setenv("PATH", f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}")  # bench_cmd
    monkeypatch.chdir(bench)
    generate_supervisor_config(".", user=getpass.getuser(), yes=True)
    setup_procfile(".", yes=True, skip_schedule=skip_schedule)
    return bench


def longest_job(variant: str) -> int:
    """What frappe's get_queues_timeout() gives for the variant's queues."""
    return max([300, 1500] + [w.get("timeout", 300) for w in VARIANTS[variant][1].values()])


def bench_queues(variant: str) -> list[str]:
    """The variant's queues, as frappe's get_queues_timeout() names them."""
    return ["short", "default", "long", *VARIANTS[variant][1]]


def sections(text: str) -> list[str]:
    """Every `[...]` section's raw text, from its header to the next one."""
    return [chunk for chunk in re.split(r"(?m)^(?=\[)", text) if chunk.startswith("[")]


def ini(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def is_worker(section: str) -> bool:
    return section.startswith("[program:") and re.search(r"^command=\S+ worker(-pool)? ", section, re.M) is not None


def supervisord_accepts(tmp_path: Path, program_file: Path) -> ServerOptions:
    """Read ``program_file`` the way supervisord does at start, through a main config that includes it."""
    main = tmp_path / "supervisord.conf"
    main.write_text(
        "[supervisord]\n"
        f"logfile={tmp_path}/supervisord.log\npidfile={tmp_path}/supervisord.pid\n"
        f"[include]\nfiles={program_file}\n"
    )
    options = ServerOptions()
    options.realize(["-c", str(main)])
    return options


@pytest.fixture(params=list(VARIANTS))
def variant(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def bench(tmp_path: Path, variant: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    return render_bench(tmp_path, variant, monkeypatch)


def test_the_templates_rendered_workers_and_a_workers_group(bench: Path, variant: str):
    conf = ini((bench / SUPERVISOR).read_text())
    workers = [s for s in conf.sections() if s.endswith("-worker")]
    assert len(workers) == (3 if variant == "default" else 4)
    assert conf.get(f"group:{BENCH}-workers", "programs").count("-worker") == len(workers)
    procfile = (bench / "Procfile").read_text()
    assert re.search(r"^worker: .*bench worker ", procfile, re.M)
    assert ("schedule:" in procfile) is not VARIANTS[variant][2]


def test_worker_programs_become_one_pool_program(bench: Path, variant: str):
    original = (bench / SUPERVISOR).read_text()
    setup_bench(str(bench), POOL_ARGS, longest_job(variant))
    rewritten = (bench / SUPERVISOR).read_text()
    conf = ini(rewritten)
    assert not [s for s in conf.sections() if s.endswith("-worker")]
    old_worker = ini(original)[f"program:{BENCH}-frappe-short-worker"]
    pool = conf[f"program:{POOL}"]
    bench_cmd = old_worker["command"].split()[0]
    assert pool["command"] == f"{bench_cmd} worker-pool " + " ".join(POOL_ARGS)
    assert pool["stopwaitsecs"] == str(longest_job(variant) + 60)
    assert pool["numprocs"] == "1" and pool["stopsignal"] == "TERM"
    for key in ("user", "directory", "stdout_logfile", "stderr_logfile", "startretries"):
        assert pool[key] == old_worker[key]
    assert conf.get(f"group:{BENCH}-workers", "programs") == f"{BENCH}-frappe-schedule,{POOL}"


def test_every_other_section_is_kept_byte_for_byte(bench: Path, variant: str):
    original = (bench / SUPERVISOR).read_text()
    setup_bench(str(bench), POOL_ARGS, longest_job(variant))
    rewritten = (bench / SUPERVISOR).read_text()
    kept = [s for s in sections(original) if not is_worker(s) and not s.startswith(f"[group:{BENCH}-workers]")]
    assert kept and [s for s in sections(rewritten) if not is_worker(s) and not s.startswith(f"[group:{BENCH}-workers]")] == kept
    assert rewritten.startswith(original[: original.index("[")])  # the notes before the first section
    assert f"[program:{BENCH}-frappe-schedule]" in "".join(kept)


def test_supervisord_accepts_the_rewritten_file(bench: Path, variant: str, tmp_path: Path):
    setup_bench(str(bench), POOL_ARGS, longest_job(variant))
    options = supervisord_accepts(tmp_path, bench / SUPERVISOR)
    groups = {g.name: [p.name for p in g.process_configs] for g in options.process_group_configs}
    assert sorted(groups[f"{BENCH}-workers"]) == sorted([f"{BENCH}-frappe-schedule", POOL])
    pool = next(p for g in options.process_group_configs for p in g.process_configs if p.name == POOL)
    assert pool.command.split()[1:3] == ["worker-pool", "--min-workers"]


def test_supervisord_s_check_fails_on_a_group_that_names_a_removed_program(bench: Path, tmp_path: Path):
    text = (bench / SUPERVISOR).read_text()
    short = next(s for s in sections(text) if s.startswith(f"[program:{BENCH}-frappe-short-worker]"))
    broken = tmp_path / "broken.conf"
    broken.write_text(text.replace(short, ""))
    with pytest.raises(SystemExit) as exited:
        supervisord_accepts(tmp_path, broken)
    assert exited.value.code == 2


def test_a_second_run_changes_nothing_and_keeps_the_first_backup(bench: Path, variant: str):
    original = (bench / SUPERVISOR).read_bytes()
    first = setup_bench(str(bench), POOL_ARGS, longest_job(variant))
    assert [o.changed for o in first] == [True, True]
    assert (bench / (SUPERVISOR + ".bak")).read_bytes() == original
    after_first = {p: (bench / p).read_bytes() for p in (SUPERVISOR, "Procfile")}
    second = setup_bench(str(bench), POOL_ARGS, longest_job(variant))
    assert [o.changed for o in second] == [False, False]
    assert {p: (bench / p).read_bytes() for p in (SUPERVISOR, "Procfile")} == after_first
    assert (bench / (SUPERVISOR + ".bak")).read_bytes() == original


def test_new_options_replace_the_pool_program_of_an_earlier_run(bench: Path, variant: str):
    setup_bench(str(bench), POOL_ARGS, longest_job(variant))
    setup_bench(str(bench), ["--num-workers", "3"], longest_job(variant))
    conf = ini((bench / SUPERVISOR).read_text())
    assert [s for s in conf.sections() if s.startswith("program:") and "worker" in s] == [f"program:{POOL}"]
    assert conf[f"program:{POOL}"]["command"].endswith(" worker-pool --num-workers 3")
    assert "bench worker-pool --num-workers 3 1>>" in (bench / "Procfile").read_text()


def test_dry_run_prints_the_diff_and_writes_nothing(bench: Path, variant: str):
    before = {p: (bench / p).read_bytes() for p in (SUPERVISOR, "Procfile")}
    outcomes = setup_bench(str(bench), POOL_ARGS, longest_job(variant), dry_run=True)
    assert {p: (bench / p).read_bytes() for p in (SUPERVISOR, "Procfile")} == before
    assert not list(bench.rglob("*.bak"))
    conf_diff = outcomes[0].diff
    assert conf_diff.startswith(f"--- a/{SUPERVISOR}\n+++ b/{SUPERVISOR}\n")
    assert f"-[program:{BENCH}-frappe-short-worker]\n" in conf_diff and f"+[program:{POOL}]\n" in conf_diff
    assert "-worker: " in outcomes[1].diff and "+worker: " in outcomes[1].diff


def test_procfile_worker_lines_become_one_pool_line(bench: Path, variant: str):
    original = (bench / "Procfile").read_text().splitlines()
    setup_bench(str(bench), POOL_ARGS, longest_job(variant))
    lines = (bench / "Procfile").read_text().splitlines()
    workers = [line for line in lines if re.match(r"worker\w*:", line)]
    assert workers == ["worker:  bench worker-pool " + " ".join(POOL_ARGS) + " 1>> logs/worker.log 2>> logs/worker.error.log"]
    assert [line for line in lines if line not in workers] == [
        line for line in original if not re.match(r"worker\w*:", line)]
    assert lines.index(workers[0]) == next(i for i, line in enumerate(original) if line.startswith("worker:"))


def test_queues_of_replaced_workers_that_no_queue_group_names_are_reported(bench: Path, variant: str):
    groups, queues = parse_groups(["short,default:1-4", "long,default,short:1-2"]), bench_queues(variant)
    assert left_out_queues(str(bench), groups, queues) == ([] if variant == "default" else ["rqo", "reports"])
    assert left_out_queues(str(bench), parse_groups(["short,default", "long,rqo,reports"]), queues) == []
    assert left_out_queues(str(bench), [], queues) == []  # without --queue the pool takes every queue of the bench


def test_a_replaced_worker_without_queue_consumed_every_queue_of_the_bench(bench: Path, variant: str):
    """Procfile's `worker: bench worker` names no queue: it took all of them, so a pool of `short` leaves the rest."""
    (bench / SUPERVISOR).unlink()
    assert re.search(r"^worker: .*bench worker 1>>", (bench / "Procfile").read_text(), re.M)
    left_out = left_out_queues(str(bench), parse_groups(["short:1-2"]), bench_queues(variant))
    assert left_out == bench_queues(variant)[1:]


def test_queues_given_as_queue_equals_are_read_too():
    from rq_orchestrator.commands.bench_setup import queues_named

    assert queues_named("bench worker --queue=short,default", ["short", "default", "long"]) == ["short", "default"]
    assert queues_named("bench worker-pool --queue=long:1-2 --queue short", ["x"]) == ["long", "short"]


def test_pool_arguments_are_quoted_for_supervisor_and_the_shell():
    conf = "[program:b-frappe-long-worker]\ncommand=/b/env/bin/bench worker --queue long\ndirectory=/b\n"
    text = rewrite_supervisor(conf, "b-pool", ["--name", "a b%"], 1500)
    assert "command=/b/env/bin/bench worker-pool --name 'a b%%'\n" in text
    assert rewrite_procfile("worker: bench worker\n", ["--name", "a b"]) == "worker: bench worker-pool --name 'a b'\n"


def test_files_without_a_worker_program_are_refused_and_nothing_is_written(tmp_path: Path):
    (tmp_path / "config").mkdir()
    conf = "[program:b-frappe-web]\ncommand=/b/env/bin/gunicorn frappe.app:application\n"
    (tmp_path / SUPERVISOR).write_text(conf)
    (tmp_path / "Procfile").write_text("worker: bench worker\n")
    with pytest.raises(BadInput, match=r"^config/supervisor.conf: no `bench worker` program"):
        setup_bench(str(tmp_path), POOL_ARGS, 1500)
    assert (tmp_path / "Procfile").read_text() == "worker: bench worker\n"
    assert not list(tmp_path.rglob("*.bak"))
    with pytest.raises(BadInput, match="bench setup supervisor"):
        setup_bench(str(tmp_path / "config"), POOL_ARGS, 1500)
