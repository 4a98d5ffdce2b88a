"""`kill -9` (or Ctrl-C) at random moments of `quantize` and `export`: no output may look complete unless it is,
and the rerun must succeed and leave nothing of the killed run behind.

    .venv/bin/python benchmarks/kill_runs.py [--tries 12] [--seed 0] [--commands quantize,export] [--root DIR]
                                             [--signal kill|int]

On the tiny model (built once under --root). Each command first runs once uncut: that gives its duration T
(then updated to each rerun's) and a complete output to start some tries from (`--overwrite` then has an old
output to replace). Each try deletes or restores the output, starts the command, sends SIGKILL to its process
group after U(0.02, 0.85)·T seconds (a run that ends first is tried again, up to 3 times, after U(0.1, 0.8) of
its uncut rerun), and checks:
  - the output path holds nothing, the old output or the new one, and whatever it holds verifies against its
    manifest; no folder outside a `.partial` has a manifest.json whose checksums fail ("looks complete, is not");
  - the rerun (same command, not killed) exits 0, its output verifies, and no `.partial` file or folder and no
    work folder is left beside it.
With --signal int the process group gets SIGINT, as a terminal's Ctrl-C sends it, instead: the command must
also stop by itself within --grace seconds with exit status 130 (or die by the signal, if it came before Python
installed its handler); `stop_s` is how long it took.
JSON (one record per try plus totals) on stdout; a line per try on stderr; exit status 1 if any try failed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

Argv = Callable[[Path, Path], list[str]]
CLI = [sys.executable, "-m", "exaone_edge.cli"]
COMMANDS: dict[str, Argv] = {
    "quantize": lambda model, out: [*CLI, "quantize", str(model), "--bits", "8", "-o", str(out), "--overwrite"],
    "export": lambda model, out: [*CLI, "export", str(model), "-o", str(out), "--overwrite"],
}
KINDS = {"quantize": "bundle", "export": "vision-onnx"}
# What each command logs as it enters a stage (log lines wrap, so these are searched in the whole log).
STAGES = {
    "quantize": [("convert: checkpoint", "F16 conversion"), ("reusing F16", "F16 reused"),
                 ("converted:", "F16 written"), ("imatrix:", "importance matrix"), ("quantize: ", "llama.cpp quantize"),
                 ("validate: KL", "KL check and bundle write"), ("bits/weight", "finished")],
    "export": [("loading the vision tower", "loading the tower"), ("exporting to ONNX", "ONNX export and optimisation"),
               ("converting to", "precision conversion"), ("✓", "checklist and manifest"), ("✗", "checklist"),
               ("wrote ", "finished")],
}


@dataclass
class Try:
    index: int
    command: str
    kill_after_s: float
    previous_output: bool
    signal: str = "KILL"
    killed: bool = False
    rc: int | None = None  # the command's exit status after the signal (-9: killed by it)
    stop_s: float = 0.0  # from the signal to the command's exit
    stage: str = ""  # the last line the command logged before the kill
    after_kill: str = ""  # absent | old | new | BROKEN: ...
    partials_after_kill: list[str] = field(default_factory=list)
    looks_complete_but_is_not: list[str] = field(default_factory=list)
    rerun_rc: int | None = None
    rerun_s: float = 0.0
    after_rerun: str = ""
    left_after_rerun: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        stopped = self.signal == "KILL" or not self.killed or self.rc in (130, -signal.SIGINT)
        return (stopped and not self.after_kill.startswith("BROKEN") and not self.looks_complete_but_is_not
                and self.rerun_rc == 0 and self.after_rerun == "new" and not self.left_after_rerun)


def state(out: Path, old_manifest: bytes | None, kind: str) -> str:
    """absent, old (the output that was there before), new, or BROKEN with the reason."""
    from exaone_edge.errors import ExaoneEdgeError
    from exaone_edge.manifest import read_manifest

    if not os.path.lexists(out):
        return "absent"
    try:
        read_manifest(out, kind=kind, verify=True)
        if kind == "bundle":
            from exaone_edge.bundle import load_bundle

            load_bundle(out, verify=True)
    except ExaoneEdgeError as error:
        return f"BROKEN: {error}"
    return "old" if (out / "manifest.json").read_bytes() == old_manifest else "new"


def false_complete(root: Path) -> list[str]:
    """Folders outside `.partial` work whose manifest.json is present but whose files do not verify."""
    from exaone_edge.errors import ExaoneEdgeError
    from exaone_edge.manifest import read_manifest

    bad = []
    for manifest in root.rglob("manifest.json"):
        if any(part.endswith(".partial") for part in manifest.relative_to(root).parts):
            continue
        try:
            read_manifest(manifest.parent, verify=True)
        except ExaoneEdgeError as error:
            bad.append(f"{manifest.parent}: {error}")
    return bad


def leftovers(parent: Path, out: Path) -> list[str]:
    names = [p.name for p in parent.iterdir() if p.name.endswith(".partial") or p.name == f".{out.name}.work"]
    return sorted(names)


def stage(command: str, log: Path) -> str:
    """The last stage the command announced before it was killed."""
    text = log.read_text(errors="replace").replace("\n", " ")
    seen = [(text.rfind(marker), name) for marker, name in STAGES[command] if marker in text]
    return max(seen)[1] if seen else "start-up (imports, checks)"


def one_try(index: int, command: str, argv: Argv, model: Path, root: Path, delay: float,
            previous: Path | None, sig: signal.Signals = signal.SIGKILL, grace: float = 120.0) -> Try:
    parent = root / f"{command}-runs"
    parent.mkdir(parents=True, exist_ok=True)
    out = parent / "out"
    if out.exists():
        shutil.rmtree(out)
    if previous is not None:
        shutil.copytree(previous, out)
    old = (out / "manifest.json").read_bytes() if previous is not None else None
    record = Try(index, command, round(delay, 2), previous is not None, signal=sig.name.removeprefix("SIG"))
    log = root / f"try-{index:02d}.log"
    with open(log, "w") as stderr:
        process = subprocess.Popen(argv(model, out), stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
        try:
            process.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            record.stage, record.killed = stage(command, log), True
            sent = time.perf_counter()
            os.killpg(process.pid, sig)
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:  # Ctrl-C ignored
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            record.stop_s = round(time.perf_counter() - sent, 2)
    record.rc = process.returncode
    if not record.killed:
        record.stage = f"finished first (rc {process.returncode})"
    record.after_kill = state(out, old, KINDS[command])
    record.partials_after_kill = leftovers(parent, out)
    record.looks_complete_but_is_not = false_complete(parent)
    started = time.perf_counter()
    with open(root / f"try-{index:02d}-rerun.log", "w") as stderr:
        record.rerun_rc = subprocess.run(argv(model, out), stdout=subprocess.DEVNULL, stderr=stderr).returncode
    record.rerun_s = round(time.perf_counter() - started, 1)
    record.after_rerun = state(out, old, KINDS[command])
    record.left_after_rerun = leftovers(parent, out)
    return record


def kill_until_killed(index: int, command: str, argv: Argv, model: Path, root: Path, delay: float,
                      previous: Path | None, rng: random.Random, attempts: int = 3,
                      sig: signal.Signals = signal.SIGKILL) -> list[Try]:
    """Tries until one is killed: the machine's speed and load vary, and a run that ends before its kill is
    tried again after U(0.1, 0.8) of the uncut rerun that followed it."""
    records: list[Try] = []
    for _ in range(attempts):
        record = one_try(index + len(records), command, argv, model, root, delay, previous, sig)
        records.append(record)
        if record.killed:
            break
        delay = rng.uniform(0.1, 0.8) * record.rerun_s
    return records


def measure(command: str, argv: Argv, model: Path, root: Path) -> tuple[float, Path]:
    """One uncut run: its duration, and its output kept as the 'old output' some tries start from."""
    pristine = root / "pristine" / command
    if pristine.exists():
        shutil.rmtree(pristine)
    pristine.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    subprocess.run([*argv(model, pristine)], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, pristine


def run(model: Path, root: Path, tries: int, seed: int, commands: dict[str, Argv],
        report: Callable[[str], None] = lambda line: None, sig: signal.Signals = signal.SIGKILL) -> dict:
    rng = random.Random(seed)
    baselines = {name: measure(name, argv, model, root) for name, argv in commands.items()}
    for name, (seconds, _) in baselines.items():
        report(f"{name}: an uncut run takes {seconds:.1f} s")
    records = []
    names = list(commands)
    latest = {name: seconds for name, (seconds, _) in baselines.items()}
    for index in range(tries):
        name = names[index % len(names)]
        pristine = baselines[name][1] if rng.random() < 0.5 else None
        delay = rng.uniform(0.02, 0.85) * latest[name]
        for record in kill_until_killed(len(records), name, commands[name], model, root, delay, pristine, rng, sig=sig):
            records.append(record)
            latest[name] = record.rerun_s or latest[name]  # the newest uncut duration
            report(f"try {record.index}: {name} SIG{record.signal} sent={record.killed} after {record.kill_after_s} s "
                   f"at '{record.stage}', rc {record.rc} {record.stop_s} s later: {record.after_kill}, left "
                   f"{record.partials_after_kill}; rerun rc {record.rerun_rc} in {record.rerun_s} s → "
                   f"{record.after_rerun}, left {record.left_after_rerun} → {'ok' if record.ok else 'FAILED'}")
    return {"seed": seed, "signal": sig.name, "baseline_s": {name: round(s, 1) for name, (s, _) in baselines.items()},
            "tries": [{**asdict(r), "ok": r.ok} for r in records], "kills": sum(r.killed for r in records),
            "failed": sum(not r.ok for r in records)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tries", type=int, default=12, help="kills wanted (a run that ends first is tried again)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commands", default="quantize,export", help="comma-separated: quantize, export")
    parser.add_argument("--root", type=Path, default=Path("/tmp/exaone-edge-kill-runs"))
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: the tiny model, built once)")
    parser.add_argument("--signal", choices=("kill", "int"), default="kill", help="SIGKILL, or SIGINT (Ctrl-C)")
    args = parser.parse_args()
    names = [name.strip() for name in args.commands.split(",") if name.strip()]
    unknown = sorted(set(names) - set(COMMANDS))
    if unknown or args.tries < 1:
        parser.error(f"unknown command(s) {unknown}" if unknown else "--tries must be >= 1")
    args.root.mkdir(parents=True, exist_ok=True)
    model = args.model
    if model is None:
        model = args.root / "tiny-model"
        if not model.exists():
            subprocess.run([*CLI, "tiny-model", str(model)], check=True, stdout=subprocess.DEVNULL)
    result = run(model, args.root, args.tries, args.seed, {name: COMMANDS[name] for name in names},
                 report=lambda line: print(line, file=sys.stderr, flush=True),
                 sig=signal.SIGINT if args.signal == "int" else signal.SIGKILL)
    print(json.dumps(result, indent=2))
    sys.exit(1 if result["failed"] else 0)


if __name__ == "__main__":
    main()
