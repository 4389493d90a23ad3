"""Runs ``python -m pixel_ddpg.train`` in forked children with a fault planted at one moment:
a SIGKILL, a NaN in the learner, a file-size limit (tests/test_faults.py).

Starting a fresh interpreter costs ~7-12 s of imports (torch, torch._dynamo, envpool) on 2 busy
cores, more than a tiny run itself. This process imports them once, then forks one child per
run: the child is a whole ``train`` command line (Hydra, lock, checkpoints, exit code) with its
stdout and stderr in files. No torch computation runs before a fork, so no thread pool is copied.

Protocol, one JSON object a line: ``{"op": "start", "argv": [...], "out": path, "err": path,
"fault": {...} | null}`` answers ``{"pid": N}``; ``{"op": "wait", "pid": N, "timeout": s}``
answers ``{"rc": exit code, or -signal, or null on timeout (the child is then killed)}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------------------------- in the child
def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _digest(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None


def _record(fault: dict[str, Any], run_dir: Path) -> None:
    """What the run dir's checkpoints and CSVs hold at the fault, for the test to compare after."""
    files = ("checkpoints/last.pt", "checkpoints/best.pt", "train.csv", "eval.csv")
    Path(fault["record"]).write_text(json.dumps({f: _digest(run_dir / f) for f in files}))


def plant(fault: dict[str, Any]) -> None:
    """Patch the code this child runs so that ``fault`` happens at its moment, once."""
    import torch

    from pixel_ddpg import checkpoint as ckpt_io
    from pixel_ddpg import rundir, runlog, trainer
    from pixel_ddpg.agent import DDPGAgent

    kind, at = fault["kind"], fault.get("at")
    frame = int(fault.get("frame", 0))
    now: dict[str, Any] = {"save_frame": -1, "eval_frame": -1, "trainer": None}

    init = trainer.Trainer.__init__

    def traced_init(self: trainer.Trainer, *args: Any, **kwargs: Any) -> None:
        now["trainer"] = self
        if kind == "kill" and at == "init":
            _die()
        init(self, *args, **kwargs)

    trainer.Trainer.__init__ = traced_init
    state = trainer.Trainer.checkpoint_state

    def traced_state(self: trainer.Trainer) -> dict[str, Any]:
        now["save_frame"] = self.counters.frame
        return state(self)

    trainer.Trainer.checkpoint_state = traced_state

    if kind == "kill":
        if at == "init":
            pass  # traced_init
        elif at == "lock":  # just after the lock is taken: before config.yaml exists
            acquire = runlog.RunLock.acquire

            def acquire_and_die(self: runlog.RunLock) -> str | None:
                acquire(self)
                _die()

            runlog.RunLock.acquire = acquire_and_die
        elif at == "update":  # between two updates of an iteration, the collector stepping
            update = DDPGAgent.update

            def update_and_die(self: DDPGAgent, batch: Any, **kw: Any) -> dict[str, torch.Tensor]:
                out = update(self, batch, **kw)
                if now["trainer"].counters.frame >= frame:
                    _die()
                return out

            DDPGAgent.update = update_and_die
        elif at == "iteration":
            iteration = trainer.Trainer.iteration

            def iteration_or_die(self: trainer.Trainer) -> None:
                if self.counters.frame >= frame:
                    _die()
                iteration(self)

            trainer.Trainer.iteration = iteration_or_die
        elif at == "eval":  # a few env steps into an evaluation
            evaluate, run_episodes = trainer.Trainer.evaluate, trainer.run_episodes

            def traced_evaluate(self: trainer.Trainer) -> float | None:
                now["eval_frame"] = self.counters.frame
                return evaluate(self)

            def episodes_and_die(env: Any, policy: Any, episodes: int, on_step: Any = None, **kw: Any) -> Any:
                steps = [0]

                def step_and_die(step: Any, returns: Any) -> None:
                    steps[0] += 1
                    if now["eval_frame"] >= frame and steps[0] == 5:
                        _die()
                    if on_step is not None:
                        on_step(step, returns)

                return run_episodes(env, policy, episodes, on_step=step_and_die, **kw)

            trainer.Trainer.evaluate = traced_evaluate
            trainer.run_episodes = episodes_and_die
        elif at in ("csv_torn", "csv_row"):  # half a row on disk, or a whole row the checkpoint lacks
            append = runlog.CsvLog._append

            def append_or_die(self: runlog.CsvLog, data: bytes) -> None:
                first = data.split(b",", 1)[0]
                due = self.path.name == fault["file"] and first.isdigit() and int(first) >= frame
                if due and at == "csv_torn":
                    os.write(self._fd, data[: len(data) // 2])
                    _die()
                append(self, data)
                if due:
                    _die()

            runlog.CsvLog._append = append_or_die
        elif at in ("ckpt_partial", "best", "truncate"):  # half-way through writing a temporary file
            targets = {"ckpt_partial": ".last.pt.tmp-", "best": ".best.pt.tmp-", "truncate": ".csv.tmp-"}
            write = rundir._Recording.write

            def write_or_die(self: Any, data: bytes) -> int:
                name = Path(getattr(self.f, "name", "")).name
                if targets[at] in name and (at == "truncate" or now["save_frame"] >= frame):
                    self.f.write(bytes(data)[: max(1, len(data) // 2)])
                    self.f.flush()
                    _die()
                return write(self, data)

            rundir._Recording.write = write_or_die
        elif at == "ckpt_unrenamed":  # the temporary file whole and synced, not yet renamed
            replace = os.replace

            def replace_or_die(src: Any, dst: Any) -> None:
                if ".last.pt.tmp-" in Path(src).name and now["save_frame"] >= frame:
                    _die()
                replace(src, dst)

            os.replace = replace_or_die
        else:
            raise ValueError(f"unknown kill moment {at!r}")
    elif kind == "poison":  # a NaN or inf in one network's weights, once, from `frame` on
        def poison(t: trainer.Trainer) -> None:
            if t.counters.frame >= frame and not now.get("poisoned"):
                now["poisoned"] = True
                _record(fault, t.run_dir)
                with torch.no_grad():
                    next(getattr(t.agent, fault["net"]).parameters()).view(-1)[0] = float(fault["value"])

        if fault["when"] == "update":  # before an update: its losses show it
            update = DDPGAgent.update

            def update_poisoned(self: DDPGAgent, batch: Any, **kw: Any) -> dict[str, torch.Tensor]:
                poison(now["trainer"])
                return update(self, batch, **kw)

            DDPGAgent.update = update_poisoned
        elif fault["when"] == "iteration":  # after an iteration: no update or action shows it yet
            iteration = trainer.Trainer.iteration

            def iteration_poisoned(self: trainer.Trainer) -> None:
                iteration(self)
                poison(self)

            trainer.Trainer.iteration = iteration_poisoned
        else:  # "check": just before a check, after the last update
            check = trainer.Trainer.check_finite

            def check_poisoned(self: trainer.Trainer) -> None:
                poison(self)
                check(self)

            trainer.Trainer.check_finite = check_poisoned
    elif kind == "fsize":  # the file-size limit falls on a checkpoint or CSV write (a full disk)
        def limit(path: Path, run_dir: Path, size: int) -> None:
            if not now.get("limited"):
                now["limited"] = True
                _record(fault, run_dir)
                resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

        if fault["file"] == "last.pt":
            save = ckpt_io.save_atomic

            def save_limited(obj: dict[str, Any], path: Path) -> None:
                if obj["counters"]["frame"] >= frame and path.name == "last.pt" and path.exists():
                    limit(path, path.parent.parent, path.stat().st_size // 2)
                save(obj, path)

            ckpt_io.save_atomic = save_limited
        else:
            write = runlog.CsvLog.write

            def write_limited(self: runlog.CsvLog, row: Any) -> None:
                if self.path.name == fault["file"] and int(row["frame"]) >= frame:
                    limit(self.path, self.path.parent, self.path.stat().st_size + 10)
                write(self, row)

            runlog.CsvLog.write = write_limited
    else:
        raise ValueError(f"unknown fault {kind!r}")


def _child(request: dict[str, Any]) -> None:
    code = 1
    writers: list[subprocess.Popen] = []
    try:
        for fd, path in ((1, request["out"]), (2, request["err"])):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            if (request.get("fault") or {}).get("kind") == "fsize":
                # The child's file-size limit must not cut its own stdout and stderr: a `cat`
                # started before the limit writes them, through a pipe (no limit on pipes).
                writers.append(subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=target))
                os.dup2(writers[-1].stdin.fileno(), fd)
                writers[-1].stdin.close()
            else:
                os.dup2(target, fd)
            os.close(target)
        if request.get("fault"):
            plant(request["fault"])
        sys.argv = ["pixel_ddpg.train", *request["argv"]]
        from pixel_ddpg.train import main

        try:
            main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:  # noqa: BLE001 - a child must never return into the server's loop
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        if writers:
            os.close(1)
            os.close(2)
            for writer in writers:
                writer.wait(timeout=30)
        os._exit(code)


def serve() -> None:
    import envs  # noqa: F401  (EGL before envpool)
    from envs.egl import import_envpool

    import_envpool()
    import hydra  # noqa: F401
    import torch._dynamo  # noqa: F401  (what Adam imports on first use: seconds)
    from torch.utils.tensorboard import SummaryWriter  # noqa: F401

    import pixel_ddpg.train  # noqa: F401
    import pixel_ddpg.trainer  # noqa: F401

    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            answer: dict[str, Any] = {"pid": pid}
        elif request["op"] == "wait":
            deadline, rc = time.monotonic() + float(request["timeout"]), None
            while time.monotonic() < deadline:
                pid, status = os.waitpid(request["pid"], os.WNOHANG)
                if pid:
                    rc = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(0.05)
            else:
                os.kill(request["pid"], signal.SIGKILL)
                os.waitpid(request["pid"], 0)
            answer = {"rc": rc}
        else:
            answer = {"error": f"unknown op {request['op']!r}"}
        print(json.dumps(answer), flush=True)
    os._exit(0)  # the test is done with it: skip seconds of torch's teardown


# ---------------------------------------------------------------------------------- in the test
class Child:
    """One forked ``train`` run: its pid, and its stdout and stderr once it has ended."""

    def __init__(self, pid: int, out: Path, err: Path) -> None:
        self.pid, self.out_path, self.err_path = pid, out, err
        self.rc: int | None = None

    @property
    def out(self) -> str:
        return self.out_path.read_text()

    @property
    def err(self) -> str:
        return self.err_path.read_text()

    def __repr__(self) -> str:  # what a failed assert shows
        return f"<child {self.pid} rc={self.rc}>\n--- stdout\n{self.out}\n--- stderr\n{self.err}"


class FaultRunner:
    """The test's end: one server process, many children."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve())], cwd=ROOT, text=True,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._n = 0
        self._live: set[int] = set()
        assert json.loads(self._ask_line())["ready"]

    def _ask_line(self) -> str:
        line = self._proc.stdout.readline()
        assert line, f"the fault runner died (rc {self._proc.poll()})"
        return line

    def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        self._proc.stdin.write(json.dumps(request) + "\n")
        self._proc.stdin.flush()
        return json.loads(self._ask_line())

    def start(self, argv: list[str], fault: dict[str, Any] | None = None) -> Child:
        self._n += 1
        out, err = self.logs / f"{self._n:03d}.out", self.logs / f"{self._n:03d}.err"
        pid = self._ask({"op": "start", "argv": list(argv), "out": str(out), "err": str(err), "fault": fault})["pid"]
        self._live.add(pid)
        return Child(pid, out, err)

    def wait(self, child: Child, timeout: float = 240) -> Child:
        child.rc = self._ask({"op": "wait", "pid": child.pid, "timeout": timeout})["rc"]
        self._live.discard(child.pid)
        assert child.rc is not None, f"timed out after {timeout} s: {child!r}"
        return child

    def run(self, argv: list[str], fault: dict[str, Any] | None = None, timeout: float = 240) -> Child:
        return self.wait(self.start(argv, fault), timeout)

    def close(self) -> None:
        for pid in list(self._live):  # only children this runner started
            self._ask({"op": "wait", "pid": pid, "timeout": 0})
        self._proc.stdin.close()
        self._proc.wait(timeout=60)


if __name__ == "__main__":
    serve()
