"""Watch a pool in Frappe's desk with a real browser: RQ Worker, RQ Worker Pool and its form.

Run by hand against a bench that has rq_orchestrator installed in a site and
its desk served (`bench --site SITE serve --port 8000`, or production):

    python tools/desk_check.py --bench ~/frappe-bench --site mysite --url http://127.0.0.1:8000

It starts `bench worker-pool` (the seed's settings; `--pool-args` to change
them), logs in with headless Chromium, enqueues the seed's load (one 1-second
job, `frappe.core.doctype.rq_job.test_rq_job.test_func` with ``sleep=1``,
every 0.5 s for `--load-seconds`), and reads, while the load runs and after
it, what the desk lists show: the workers in RQ Worker (reloaded: Frappe
refreshes it only every 5 minutes without socket.io) and the pool's row in
RQ Worker Pool (never reloaded: its list refreshes itself every 5 s). Then it
opens the pool's form and checks that the chart is drawn and the decision log
filled. Screenshots go to `--out` (default `docs/`). Exit status 0 when the
lists showed the pool growing and shrinking back and the chart was drawn.

Needs selenium (`pip install selenium`) and Chromium with its driver
(Debian: `apt install chromium chromium-driver`). The pool and the load run
with the bench's own Python; this script needs neither frappe nor rq.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

SEED_POOL = "--min-workers 2 --max-workers 8 --scaling-period 5 --utilization-threshold 0.5 --utilization-window 30"
LOAD = """
import sys, time, frappe
frappe.init(site=sys.argv[1]); frappe.connect()
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    frappe.enqueue("frappe.core.doctype.rq_job.test_rq_job.test_func", queue="default", sleep=1)
    frappe.db.commit()
    time.sleep(0.5)
"""
# What a list has loaded and shows (None while it loads), wrapped so that an empty list is an answer.
LOADED = ("const l = window.cur_list; if (!l || l.doctype !== '{doctype}') return null;"
          " if (!l.data.length && !(l.$no_result && l.$no_result.is(':visible'))) return null;"
          " return {{rows: l.data.map(d => [{fields}])}};")
POOL_ROWS = LOADED.format(doctype="RQ Worker Pool", fields="d.name, d.workers, d.busy, d.utilization, d.state")
WORKER_ROWS = LOADED.format(doctype="RQ Worker", fields="d.name, d.status")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", required=True, type=Path, help="the bench directory")
    parser.add_argument("--site", required=True)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="where the site's desk is served")
    parser.add_argument("--user", default="Administrator")
    parser.add_argument("--password", default=os.environ.get("DESK_PASSWORD", "admin"),
                        help="default: $DESK_PASSWORD, else admin")
    parser.add_argument("--pool-args", default=SEED_POOL, help=f"bench worker-pool options (default: {SEED_POOL})")
    parser.add_argument("--load-seconds", type=float, default=120.0)
    parser.add_argument("--settle-seconds", type=float, default=120.0, help="how long to wait for the shrink")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    parser.add_argument("--size", default="1400,900", help="browser window, width,height")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--chromedriver", default="/usr/bin/chromedriver")
    return parser.parse_args()


def log(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", flush=True)


def bench_python(args: argparse.Namespace, *command: str, **popen: object) -> subprocess.Popen:
    return subprocess.Popen([str(args.bench / "env/bin/python"), *command], cwd=args.bench / "sites",
                            start_new_session=True, **popen)


def browser(args: argparse.Namespace) -> webdriver.Chrome:
    options = Options()
    options.binary_location = args.chromium
    # Two tabs stay open (RQ Worker Pool never reloaded, RQ Worker reloaded): keep the hidden one's timers running.
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={args.size}",
                 "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
                 "--disable-backgrounding-occluded-windows"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(args.chromedriver), options=options)
    driver.set_window_size(*map(int, args.size.split(",")))
    driver.get(args.url + "/login")
    wait = WebDriverWait(driver, 60)
    wait.until(EC.presence_of_element_located((By.ID, "login_email"))).send_keys(args.user)
    driver.find_element(By.ID, "login_password").send_keys(args.password)
    driver.find_element(By.CSS_SELECTOR, ".form-signin .btn-login").click()
    wait.until(lambda d: "/app" in d.current_url)
    return driver


def open_route(driver: webdriver.Chrome, args: argparse.Namespace, route: str, script: str) -> list:
    driver.get(args.url + route)
    return WebDriverWait(driver, 60).until(lambda d: d.execute_script(script))["rows"]


def our_workers(rows: list, master: int) -> list:
    """RQ Worker rows of the pool's workers: the master's children (names are `w<slot>.<pid>.<host>.<pool>`)."""
    try:
        children = set(Path(f"/proc/{master}/task/{master}/children").read_text().split())
    except OSError:
        children = set()
    return [r for r in rows if r[0].startswith("w") and r[0].split(".")[1] in children]


class Watch:
    """What the two lists showed over time: the most workers, and the last count."""

    def __init__(self) -> None:
        self.most_listed = self.most_pool = 0
        self.last_listed = self.last_pool = 0

    def seen(self, listed: int, pool: int) -> None:
        self.most_listed, self.most_pool = max(self.most_listed, listed), max(self.most_pool, pool)
        self.last_listed, self.last_pool = listed, pool


class Desk:
    """Two tabs: RQ Worker Pool, opened once and left to refresh itself, and RQ Worker, reloaded to read it."""

    def __init__(self, driver: webdriver.Chrome, args: argparse.Namespace) -> None:
        self.driver, self.args = driver, args
        open_route(driver, args, "/app/rq-worker-pool", POOL_ROWS)
        self.pool_tab = driver.current_window_handle
        driver.switch_to.new_window("tab")
        self.worker_tab = driver.current_window_handle
        open_route(driver, args, "/app/rq-worker", WORKER_ROWS)

    def workers(self) -> list:
        self.driver.switch_to.window(self.worker_tab)
        return open_route(self.driver, self.args, "/app/rq-worker", WORKER_ROWS)

    def pools(self) -> list:
        self.driver.switch_to.window(self.pool_tab)
        return WebDriverWait(self.driver, 60).until(lambda d: d.execute_script(POOL_ROWS))["rows"]


def sample(desk: Desk, watch: Watch, pool_pid: int, phase: str) -> list:
    """One reading of both lists: the pool's workers in RQ Worker, its rows in RQ Worker Pool."""
    workers = our_workers(desk.workers(), pool_pid)
    busy = sum(1 for w in workers if w[1] == "busy")
    pool_rows = [r for r in desk.pools() if r[0].split(":")[1] == str(pool_pid)]
    watch.seen(len(workers), sum(r[1] or 0 for r in pool_rows))
    log(f"{phase}: RQ Worker lists {len(workers)} pool workers ({busy} busy); RQ Worker Pool shows "
        + "; ".join(f"{r[0]} workers={r[1]} busy={r[2]} utilization={r[3]}% {r[4]}" for r in pool_rows))
    return pool_rows


def shoot(driver: webdriver.Chrome, args: argparse.Namespace, name: str) -> None:
    path = args.out / name
    driver.save_screenshot(str(path))
    log(f"screenshot {path} ({path.stat().st_size // 1024} KB)")


def check_form(driver: webdriver.Chrome, args: argparse.Namespace, name: str) -> bool:
    driver.get(f"{args.url}/app/rq-worker-pool/{name}")
    wait = WebDriverWait(driver, 60)
    wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".rq-worker-pool-chart svg")))
    time.sleep(6)  # one refresh of the form by itself
    lines = len(driver.find_elements(By.CSS_SELECTOR, ".rq-worker-pool-chart svg path"))
    decisions = len(driver.find_elements(By.CSS_SELECTOR, "[data-fieldname='decisions_html'] tbody tr"))
    log(f"form {name}: chart drawn with {lines} paths, decision log {decisions} rows")
    width, height = map(int, args.size.split(","))
    driver.set_window_size(width, max(height, 1300))  # the form's top: its figures, the chart and the latest decisions
    time.sleep(6)  # and the next refresh drawn at that size
    shoot(driver, args, "desk-rq-worker-pool-form.png")
    driver.set_window_size(width, height)
    return lines > 0 and decisions > 0


def run(args: argparse.Namespace, driver: webdriver.Chrome, pool: subprocess.Popen) -> bool:
    watch = Watch()
    desk = Desk(driver, args)
    deadline = time.monotonic() + 60
    while not (rows := sample(desk, watch, pool.pid, "idle")) and time.monotonic() < deadline:
        time.sleep(2)
    if not rows:
        log("the pool never appeared in RQ Worker Pool")
        return False
    idle = watch.last_pool
    load = bench_python(args, "-c", LOAD, args.site, str(args.load_seconds))
    log(f"seed load started: one 1-s job every 0.5 s for {args.load_seconds:.0f} s")
    shot_at = time.monotonic() + args.load_seconds * 0.75
    while load.poll() is None:
        time.sleep(5)
        sample(desk, watch, pool.pid, "load")
        if time.monotonic() >= shot_at:
            shot_at = float("inf")
            shoot(driver, args, "desk-rq-worker-pool-list.png")
            desk.workers()
            shoot(driver, args, "desk-rq-worker-list.png")
    grown = watch.most_pool > idle and watch.most_listed > idle
    deadline = time.monotonic() + args.settle_seconds
    while time.monotonic() < deadline and (watch.last_pool > idle or watch.last_listed > idle):
        time.sleep(5)
        rows = sample(desk, watch, pool.pid, "after")
    shrunk = watch.last_pool == idle and watch.last_listed == idle
    log(f"grew from {idle} to {watch.most_pool} workers (RQ Worker listed at most {watch.most_listed}): {grown}; "
        f"back to {watch.last_pool} (RQ Worker lists {watch.last_listed}): {shrunk}")
    driver.switch_to.window(desk.pool_tab)
    charted = check_form(driver, args, max(rows, key=lambda r: r[1] or 0)[0])
    return grown and shrunk and charted


def main() -> int:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    command = ["-m", "frappe.utils.bench_helper", "frappe", "--site", args.site, "worker-pool",
               *shlex.split(args.pool_args)]
    with open(args.out / "desk-check-pool.log", "w") as pool_log:
        pool = bench_python(args, *command, stdout=pool_log, stderr=subprocess.STDOUT)
    log(f"pool started: pid {pool.pid}, bench worker-pool {args.pool_args}")
    driver = None
    try:
        driver = browser(args)
        ok = run(args, driver, pool)
    finally:
        if driver is not None:
            driver.quit()
        os.killpg(pool.pid, signal.SIGTERM)
        pool.wait(120)
        (args.out / "desk-check-pool.log").unlink(missing_ok=True)
    log("desk check " + ("passed" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
