"""Rewrite what `bench setup supervisor` and `bench setup procfile` wrote so one pool replaces the `bench worker` programs.

Text in, text out: the rewriting knows nothing of Frappe. A worker program is
recognised by its command (`<bench> worker ...`, or `<bench> worker-pool ...` of
Frappe's built-in pool or of an earlier run), not by its name, so custom
`workers` queues are caught and a second run replaces its own program.
"""

from __future__ import annotations

import configparser
import difflib
import os
import re
import shlex
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..cli.group_specs import GroupRequest, parse_group
from ..infra.errors import BadInput
from .supervisor import program_block

BACKUP_SUFFIX = ".bak"
WORKER_COMMANDS = ("worker", "worker-pool")
SECTION = re.compile(r"^\[(?P<name>[^\]]+)\]\s*$")
PROCFILE_LINE = re.compile(r"^(?P<process>[A-Za-z0-9_-]+):(?P<command>.*?)(?P<end>\r?\n?)$")
REDIRECTION = re.compile(r"\s+\d?>")
BENCH_WORKER = re.compile(r"(?:^|(?<=\s))bench\s+(?:worker-pool|worker)(?=\s|$)")


@dataclass(frozen=True)
class Section:
    """One `[...]` section of an ini file: its header and body lines, then the blank lines after it."""

    name: str
    body: list[str]
    gap: list[str]

    def text(self) -> str:
        return "".join(self.body + self.gap)

    def values(self) -> dict[str, str]:
        parser = configparser.RawConfigParser(strict=False, inline_comment_prefixes=(";", "#"))
        parser.read_string("".join(self.body))
        return dict(parser.items(self.name)) if parser.has_section(self.name) else {}


def split_sections(text: str) -> tuple[str, list[Section]]:
    """The text before the first section, and every section with the blank lines that follow it."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if SECTION.match(line)]
    head = "".join(lines[: starts[0]] if starts else lines)
    sections = []
    for start, end in zip(starts, starts[1:] + [len(lines)]):
        chunk = lines[start:end]
        keep = len(chunk)
        while keep > 1 and not chunk[keep - 1].strip():
            keep -= 1
        name = SECTION.match(chunk[0])["name"].strip()  # type: ignore[index]
        sections.append(Section(name, chunk[:keep], chunk[keep:]))
    return head, sections


def bench_prefix(command: str) -> list[str] | None:
    """The words before `worker`/`worker-pool` when ``command`` runs a bench worker, else None."""
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    for i, word in enumerate(words[:-1]):
        if os.path.basename(word) == "bench" and words[i + 1] in WORKER_COMMANDS:
            return words[: i + 1]
    return None


def is_worker_program(section: Section) -> bool:
    return section.name.startswith("program:") and bench_prefix(section.values().get("command", "")) is not None


def pool_program(name: str, worker: Section, pool_args: Sequence[str], longest_stop: int) -> str:
    """The pool's program block, run as, where and with the logs of the first worker program it replaces."""
    values = worker.values()
    command = [*(bench_prefix(values["command"]) or ["bench"]), "worker-pool", *pool_args]
    return program_block(
        name,
        command,
        directory=values.get("directory"),
        stdout_logfile=values.get("stdout_logfile", "logs/worker.log"),
        stderr_logfile=values.get("stderr_logfile", "logs/worker.error.log"),
        longest_stop=longest_stop,
        user=values.get("user"),
        startretries=values.get("startretries"),
    )


def regroup(section: Section, removed: Sequence[str], pool: str) -> Section:
    """A `[group:...]` section whose programs list names the pool where it named the first removed program."""
    body = []
    for line in section.body:
        key, sep, value = line.partition("=")
        if key.strip() != "programs" or not sep:
            body.append(line)
            continue
        names = [n.strip() for n in value.split(",") if n.strip()]
        if not set(names) & set(removed):
            body.append(line)
            continue
        kept: list[str] = []
        for n in names:
            n = pool if n in removed else n
            if n not in kept:
                kept.append(n)
        end = line[len(line.rstrip("\r\n")):]
        body.append(f"{key}{sep}{','.join(kept)}{end}")
    return Section(section.name, body, section.gap)


def rewrite_supervisor(text: str, name: str, pool_args: Sequence[str], longest_stop: int) -> str:
    """``text`` with its worker programs replaced by one pool program ``name``; everything else as it was.

    The pool program takes the place of the first worker program; every group
    that listed a worker program lists the pool instead.
    """
    head, sections = split_sections(text)
    workers = [i for i, s in enumerate(sections) if is_worker_program(s)]
    if not workers:
        raise BadInput("no `bench worker` program in the supervisor config")
    removed = [sections[i].name.partition(":")[2] for i in workers]
    out = [head]
    for i, section in enumerate(sections):
        if i == workers[0]:
            out.append(pool_program(name, section, pool_args, longest_stop) + "".join(section.gap))
        elif i in workers:
            continue
        elif section.name.startswith("group:"):
            out.append(regroup(section, removed, name).text())
        else:
            out.append(section.text())
    return "".join(out)


def rewrite_procfile(text: str, pool_args: Sequence[str]) -> str:
    """``text`` with its `bench worker` processes replaced by one `worker: bench worker-pool ...` line.

    The new line keeps what the first worker line had before `bench` (an
    environment) and its redirections.
    """
    out: list[str] = []
    found = False
    for line in text.splitlines(keepends=True):
        match = PROCFILE_LINE.match(line)
        command = match["command"] if match else ""
        redirect = REDIRECTION.search(command)
        run = command[: redirect.start()] if redirect else command
        bench = BENCH_WORKER.search(run)
        if match is None or bench is None:
            out.append(line)
            continue
        if not found:
            args = " ".join(["bench worker-pool", *([shlex.join(pool_args)] if pool_args else [])])
            rest = command[redirect.start():] if redirect else ""
            out.append(f"worker:{run[: bench.start()]}{args}{rest}{match['end']}")
            found = True
    if not found:
        raise BadInput("no `bench worker` process in the Procfile")
    return "".join(out)


def queues_named(command: str, all_queues: Sequence[str]) -> list[str]:
    """The queues a `bench worker`/`bench worker-pool` command consumes, in order: those its --queue options name,
    or ``all_queues`` (the bench's) when it has none."""
    values = option_values(command, "--queue")
    if not values:
        return list(all_queues)
    queues: list[str] = []
    for value in values:
        try:
            queues += parse_group(value).queues
        except BadInput:
            continue
    return queues


def option_values(command: str, option: str) -> list[str]:
    """The values ``command`` gives ``option`` (``--option VALUE`` or ``--option=VALUE``), in order (none if unparsable)."""
    try:
        words = shlex.split(command)
    except ValueError:  # unbalanced quotes: supervisor would not run it either
        return []
    return [value if word == option else word.partition("=")[2]
            for word, value in zip(words, [*words[1:], ""]) if word == option or word.startswith(f"{option}=")]


def worker_commands(supervisor_text: str, procfile_text: str) -> list[str]:
    """The commands of the worker programs and of the Procfile's worker lines."""
    _, sections = split_sections(supervisor_text)
    commands = [s.values()["command"] for s in sections if is_worker_program(s)]
    for line in procfile_text.splitlines():
        match = PROCFILE_LINE.match(line)
        if match and BENCH_WORKER.search(match["command"]):
            commands.append(match["command"])
    return commands


def replaced_queues(supervisor_text: str, procfile_text: str, all_queues: Sequence[str]) -> list[str]:
    """Every queue that a worker program or Procfile worker line consumes."""
    commands = worker_commands(supervisor_text, procfile_text)
    return list(dict.fromkeys(q for c in commands for q in queues_named(c, all_queues)))


def bench_texts(bench_dir: str) -> tuple[str, str]:
    """The bench's supervisor config and Procfile ("" for a file it does not have)."""
    files = [Path(bench_dir, "config", "supervisor.conf"), Path(bench_dir, "Procfile")]
    supervisor_text, procfile_text = (f.read_text() if f.is_file() else "" for f in files)
    return supervisor_text, procfile_text


def left_out_queues(bench_dir: str, groups: Sequence[GroupRequest], all_queues: Sequence[str]) -> list[str]:
    """Queues the bench's worker programs consumed that no ``--queue`` group names (none without --queue:
    the pool then takes all of the bench's queues, ``all_queues``)."""
    if not groups:
        return []
    named = {q for g in groups for q in g.queues}
    return [q for q in replaced_queues(*bench_texts(bench_dir), all_queues) if q not in named]


def left_out_strategies(bench_dir: str, strategy: str | None) -> list[str]:
    """The `--strategy` values of the bench's worker programs that the pool's ``strategy`` is not."""
    used = {values[-1] for c in worker_commands(*bench_texts(bench_dir)) if (values := option_values(c, "--strategy"))}
    return sorted(used - {strategy})


def diff(old: str, new: str, path: str) -> str:
    """A unified diff of one file's rewrite, as `git diff` would label it."""
    return "".join(difflib.unified_diff(
        old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}"))


def replace_file(path: str, text: str) -> None:
    """Write ``text`` to ``path`` after copying the old file to ``path``.bak.

    The new text goes to a temporary file beside it first, so a reader never
    sees half a config; the file keeps its mode.
    """
    shutil.copy2(path, path + BACKUP_SUFFIX)
    fd, temp = tempfile.mkstemp(dir=os.path.dirname(path) or ".", prefix=".worker-pool-")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        shutil.copymode(path, temp)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


@dataclass(frozen=True)
class Outcome:
    """What one file's rewrite did (or, in a dry run, would do); ``path`` is relative to the bench."""

    path: str
    changed: bool
    diff: str = ""
    backup: str | None = None


def planned_text(bench_dir: str, path: str, rewrite: Callable[[str], str]) -> tuple[str, str]:
    """The file's text and its rewrite; bad input names the file."""
    with open(os.path.join(bench_dir, path)) as f:
        old = f.read()
    try:
        return old, rewrite(old)
    except BadInput as exc:
        raise BadInput(f"{path}: {exc.message}") from None


def setup_bench(
    bench_dir: str, pool_args: Sequence[str], longest_stop: int, program_name: str | None = None, dry_run: bool = False
) -> list[Outcome]:
    """Rewrite ``bench_dir``'s config/supervisor.conf and Procfile, those of them that exist.

    Both rewrites are worked out before either file is written, so bad input
    (no file, no worker program in a file that exists) changes nothing.
    """
    name = program_name or f"{os.path.basename(os.path.abspath(bench_dir))}-frappe-worker-pool"
    rewrites: dict[str, Callable[[str], str]] = {
        os.path.join("config", "supervisor.conf"): lambda text: rewrite_supervisor(text, name, pool_args, longest_stop),
        "Procfile": lambda text: rewrite_procfile(text, pool_args),
    }
    present = [p for p in rewrites if os.path.isfile(os.path.join(bench_dir, p))]
    if not present:
        raise BadInput(f"no config/supervisor.conf and no Procfile in {bench_dir}: run `bench setup supervisor` "
                       "or `bench setup procfile` first")
    plans = {p: planned_text(bench_dir, p, rewrites[p]) for p in present}
    outcomes = []
    for path, (old, new) in plans.items():
        if new == old:
            outcomes.append(Outcome(path, changed=False))
        elif dry_run:
            outcomes.append(Outcome(path, changed=True, diff=diff(old, new, path)))
        else:
            replace_file(os.path.join(bench_dir, path), new)
            outcomes.append(Outcome(path, changed=True, backup=path + BACKUP_SUFFIX))
    return outcomes
