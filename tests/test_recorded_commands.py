"""Every command a results page records still parses: the flags, choices and values of each
`command` in docs' results.json files, and of each "Regenerate:" or "Command:" on a page, are read
by today's argument parsers (each parser stops there: nothing runs). A renamed flag, a choice
removed, or a command recorded without the quotes the shell needs fails here, naming the page."""

import argparse
import contextlib
import glob
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_LABELLED = re.compile(r"(?:Regenerate|Command):\s*`([^`]+)`")


def recorded_commands():
    """{command: [pages that record it]} from results.json files and labelled commands on pages."""
    found = {}
    for path in glob.glob(os.path.join(ROOT, "docs", "**", "*.json"), recursive=True):
        try:
            with open(path) as f:
                report = json.load(f)
        except (ValueError, UnicodeDecodeError):
            continue
        if isinstance(report, dict) and isinstance(report.get("command"), str):
            found.setdefault(report["command"], []).append(os.path.relpath(path, ROOT))
    for path in glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True):
        with open(path) as f:
            for match in _LABELLED.finditer(f.read()):
                found.setdefault(" ".join(match.group(1).split()), []).append(os.path.relpath(path, ROOT))
    return found


def runs(command):
    """The runs a recorded command names: runs merged into one table are joined by " ; ", and a
    remark in parentheses may follow a run."""
    return [re.sub(r"\s*\([^()]*\)$", "", part.strip()) for part in command.split(" ; ")]


class _Parsed(Exception):
    pass


def _stop_after_parsing(parse_args):
    def parse(self, args=None, namespace=None):
        raise _Parsed(parse_args(self, args, namespace))
    return parse


_scripts: dict = {}


def _script(path):
    if path not in _scripts:
        spec = importlib.util.spec_from_file_location("_recorded_" + os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        _scripts[path] = module
    return _scripts[path]


def _parses_with_argparse(path):
    """Whether the script builds an ``argparse`` parser, or hands its run to a ``..._main`` of a
    script beside it that does (the traced pages' shared grid). Others read ``sys.argv`` by hand,
    and calling them would run them."""
    with open(path) as f:
        source = f.read()
    if "ArgumentParser" in source:
        return True
    for module, names in re.findall(r"^from (\w+) import ([\w, ]+)", source, re.M):
        beside = os.path.join(os.path.dirname(path), module + ".py")
        if any(name.strip().endswith("main") for name in names.split(",")) and os.path.exists(beside):
            with open(beside) as f:
                if "ArgumentParser" in f.read():
                    return True
    return False


def parse(argv, monkeypatch):
    """None if `argv` parses; else why not. Scripts that read sys.argv by hand (no argparse) and
    other programs are not checked (None): running them is the only check."""
    if argv[0] == "uniloss":
        from uniloss.experiments.cli import main

        call = lambda: main(argv[1:])  # noqa: E731
    elif argv[0] == "python" and len(argv) > 1 and argv[1].endswith(".py"):
        path = os.path.join(ROOT, argv[1])
        if not os.path.exists(path):
            return f"no such script {argv[1]}"
        if not _parses_with_argparse(path):
            return None
        main = _script(path).main
        if inspect.signature(main).parameters:
            call = lambda: main(argv[2:])  # noqa: E731
        else:
            monkeypatch.setattr(sys, "argv", argv[1:])
            call = main
    else:  # another program (git, pip): not the repo's to check
        return None
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            call()
    except _Parsed:
        return None
    except SystemExit:
        return (err.getvalue().strip().splitlines() or ["exit without a message"])[-1]
    return "ran to the end without parsing its arguments"


def test_the_split_of_merged_runs():
    assert runs("uniloss reproduce metric-wins --quick ; python benchmarks/x.py a (merged here)") == [
        "uniloss reproduce metric-wins --quick", "python benchmarks/x.py a"]


def test_a_wrong_flag_and_a_command_without_quotes_are_caught(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # nothing is written, and if it were, not into the repo
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _stop_after_parsing(argparse.ArgumentParser.parse_args))
    assert parse(["uniloss", "reproduce", "metric-wins", "--quick", "--jobs", "2"], monkeypatch) is None
    assert "unrecognized arguments: --no-such-flag" in parse(
        ["uniloss", "reproduce", "metric-wins", "--no-such-flag"], monkeypatch)
    unquoted = 'python benchmarks/capacity_probe.py --variant equal={"pull_weights": "equal"}'
    assert "unrecognized arguments" in parse(shlex.split(unquoted), monkeypatch)
    assert parse(shlex.split(shlex.join(["python", "benchmarks/capacity_probe.py", "--variant",
                                         'equal={"pull_weights": "equal"}'])), monkeypatch) is None


def test_every_recorded_command_parses(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", _stop_after_parsing(argparse.ArgumentParser.parse_args))
    commands = recorded_commands()
    assert len(commands) > 200  # the pages are found
    failures = []
    for command, pages in sorted(commands.items()):
        for run in runs(command):
            try:
                why = parse(shlex.split(run), monkeypatch)
            except ValueError as exc:  # shlex: an unclosed quote
                why = f"not a shell command: {exc}"
            if why is not None:
                failures.append(f"{sorted(set(pages))[0]}: {run}\n    {why}")
    assert not failures, f"{len(failures)} recorded commands no longer parse:\n" + "\n".join(failures)
