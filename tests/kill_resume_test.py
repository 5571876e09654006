#!/usr/bin/env python3
"""Kill test (docs/reliability.md): SIGKILL a training job again and again, half of the time at a
random moment and half of the time while it is writing a checkpoint, resume it each time, and
require the final parameters to be bit-identical to those of a run that was never interrupted.
The job also logs its steps (zotorch::TrajectoryWriter), continuing the log on every resume; after
some kills the test tears the log's last record as a crash mid-write would (see tear_log), and at
the end the joined log, replayed onto the initial parameters, must give the final parameters.

    kill_resume_test.py WORKER [--kills N] [--steps N] [--every K] [--seed S] [--workdir DIR]

The worker prints "saved <step>" after each save has returned. Fails when a resume cannot load the
latest checkpoint or continue the log, when a resume does not start from the latest save completed
before the kill (or the one after it, see resume_starts), when no kill landed inside a save or no
log was torn, when the final hash differs, or when the replayed log's hash differs. Python stdlib
only.
"""
import argparse
import glob
import os
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

LOG_NAME = "trajectory.ztraj"


def run_to_end(cmd):
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=300).stdout
    done = [line for line in out.splitlines() if line.startswith("done ")]
    if not done:
        sys.exit(f"FAIL: {' '.join(cmd)} printed no 'done' line:\n{out}")
    return done[-1]


def next_save(step, every, steps):
    """The step of the worker's first save after `step` (every `every` steps, and at the end)."""
    return min((step // every + 1) * every, steps)


def resume_starts(latest_saved, every, steps):
    """Where the resume after a kill may start, given the last "saved" line the killed process
    printed (or the step it started from, if none). The worker prints that line only after the
    rename, so a kill can land between a save's rename and its line: the checkpoint on disk is then
    the save after the last one reported. Any other start means a save that returned did not leave
    its checkpoint in place (or one left a checkpoint that does not load)."""
    return {latest_saved, next_save(latest_saved, every, steps)}


class Worker:
    """A worker process whose stdout a thread reads line by line as it comes, so that the lines
    printed before a kill are all seen and the pipe never fills."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.lines = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def first_line(self):
        while not self.lines and self.reader.is_alive():
            time.sleep(0.0005)
        return self.lines[0] if self.lines else ""

    def finish(self, timeout=None):
        """Waits for the process (already killed, or running to its end) and all of its output."""
        self.proc.wait(timeout=timeout)
        self.reader.join(timeout=timeout)
        return self.lines

    def last_saved(self, default):
        saved = [int(line.split()[1]) for line in self.lines if line.startswith("saved ")]
        return saved[-1] if saved else default


def log_records(data):
    """(start, end, type, step) of each complete record of a trajectory (the layout in
    include/zotorch/trajectory.h: an 8-byte header, then u32 payload length, u8 type, payload, u32
    CRC-32); step is the first field of a step record's payload, None for other records."""
    records, at = [], 8
    while at + 9 <= len(data):
        (length,) = struct.unpack_from("<I", data, at)
        end = at + 9 + length
        if end > len(data):
            break
        kind = chr(data[at + 4])
        step = struct.unpack_from("<Q", data, at + 5)[0] if kind == "S" and length >= 8 else None
        records.append((at, end, kind, step))
        at = end
    return records


def tear_log(directory, allowed, rng, zeros):
    """Cuts the log's last step record at a random byte inside it, as a crash in the middle of its
    write would; with zeros, the file keeps its size and the lost bytes read as zeros, which is what
    a file system can leave when the host dies before the data reaches the disk. Only when the
    resume does not need that record: a resume from checkpoint c needs the records up to step
    c - 1, and the checkpoint on disk is at min(allowed), or at max(allowed) once the step before
    it was logged; in that one ambiguous case, a log modified after the checkpoint file was written
    holds the steps after the checkpoint's. Returns whether it tore the log."""
    path = os.path.join(directory, LOG_NAME)
    try:
        with open(path, "rb") as f:
            data = f.read()
        log_mtime = os.stat(path).st_mtime_ns
        checkpoint_mtime = os.stat(os.path.join(directory, "latest.ckpt")).st_mtime_ns
    except FileNotFoundError:
        return False
    records = log_records(data)
    if not records or records[-1][2] != "S" or records[-1][1] != len(data):
        return False
    start, end, _, step = records[-1]
    low, high = min(allowed), max(allowed)
    if step < low or (step == high - 1 and not checkpoint_mtime < log_mtime):
        return False
    cut = rng.randrange(start + 1, end)
    with open(path, "r+b") as f:
        f.truncate(cut)
        if zeros:
            f.seek(cut)
            f.write(bytes(end - cut))
    return True


def temp_files(directory):
    return set(glob.glob(os.path.join(directory, ".latest.ckpt.tmp.*")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("worker")
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None, help="random seed of the kill times (default: time)")
    parser.add_argument("--workdir", default=None, help="keep the run directories here (default: a temp dir)")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time())
    rng = random.Random(seed)
    started = time.monotonic()

    root = args.workdir or tempfile.mkdtemp(prefix="zotorch_kill_")
    straight_dir, killed_dir = os.path.join(root, "straight"), os.path.join(root, "killed")
    for d in (straight_dir, killed_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    base = [args.worker, "--steps", str(args.steps), "--every", str(args.every)]

    t0 = time.monotonic()
    reference = run_to_end(base + ["--dir", straight_dir])
    straight_seconds = time.monotonic() - t0

    kills = in_save = unreported = torn = 0
    allowed = {0}  # where the next resume may start (resume_starts)
    resumes = []
    finished = None
    while finished is None:
        worker = Worker(base + ["--dir", killed_dir, "--resume"])
        proc = worker.proc
        first = worker.first_line().split()
        if len(first) != 2 or first[0] != "start":
            worker.finish()
            sys.exit(f"FAIL: resume {kills + 1} did not start (exit {proc.returncode}); "
                     "the latest checkpoint did not load")
        start = int(first[1])
        if start not in allowed:
            sys.exit(f"FAIL: resume {kills + 1} started at step {start}, but the latest checkpoint completely "
                     f"written before the kill is at step {min(allowed)} (or {max(allowed)} if the kill landed "
                     "between its rename and its report)")
        unreported += start != min(allowed)
        resumes.append(start)
        if kills >= args.kills:
            rest = "\n".join(worker.finish(timeout=300))
            finished = [line for line in rest.splitlines() if line.startswith("done ")]
            if proc.returncode != 0 or not finished:
                sys.exit(f"FAIL: the last resume exited with {proc.returncode}:\n{rest}")
            finished = finished[0]
            break
        before = temp_files(killed_dir)
        if kills % 2 == 0:
            # At a random moment of the training loop.
            time.sleep(rng.uniform(0.0, 0.3))
        else:
            # While a checkpoint is being written: as soon as its temp file shows up.
            deadline = time.monotonic() + 5.0
            while not (temp_files(killed_dir) - before) and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.0002)
        if proc.poll() is not None:
            # It finished before the kill: the run is over.
            rest = "\n".join(worker.finish(timeout=300))
            finished = [line for line in rest.splitlines() if line.startswith("done ")]
            if proc.returncode != 0 or not finished:
                sys.exit(f"FAIL: a resume exited with {proc.returncode}:\n{rest}")
            finished = finished[0]
            break
        proc.send_signal(signal.SIGKILL)
        worker.finish(timeout=60)
        allowed = resume_starts(worker.last_saved(default=start), args.every, args.steps)
        kills += 1
        # A temp file named after the killed process: the kill landed between its creation and
        # the rename, i.e. inside a checkpoint write. The next resume must not even notice it.
        if any(f".tmp.{proc.pid}." in f for f in temp_files(killed_dir) - before):
            in_save += 1
        # After a kill at a random moment, when the log allows it: its last record torn, as a crash
        # mid-write leaves it. The next resume's writer must cut it off and continue the log. (The
        # kills inside a checkpoint write leave the log as the kill left it.)
        if kills % 2 == 1 and tear_log(killed_dir, allowed, rng, zeros=torn % 2 == 1):
            torn += 1

    # The joined log, replayed onto the initial parameters, must reproduce the final ones.
    t0 = time.monotonic()
    replayed = subprocess.run(base + ["--dir", killed_dir, "--replay"], capture_output=True, text=True, timeout=300)
    replay_seconds = time.monotonic() - t0
    replay_line = [line for line in replayed.stdout.splitlines() if line.startswith("replayed ")]
    if replayed.returncode != 0 or not replay_line:
        sys.exit(f"FAIL: replaying the joined log exited with {replayed.returncode}:\n{replayed.stdout}{replayed.stderr}")
    replay_line = replay_line[0]
    fields = replay_line.split()
    replay_steps, replay_truncated = int(fields[fields.index("steps") + 1]), fields[fields.index("truncated") + 1]

    elapsed = time.monotonic() - started
    same = finished.split("hash ")[-1] == reference.split("hash ")[-1]
    same_replay = replay_line.split("hash ")[-1] == finished.split("hash ")[-1]
    print(f"kill_resume: {kills} SIGKILLs ({in_save} inside a checkpoint write, temp file left behind; "
          f"{torn} followed by a torn log record), "
          f"{args.steps} steps, checkpoint every {args.every}, resumed from steps {resumes} "
          f"(each the last save reported before the kill or, {unreported} times, the save after it); "
          f"uninterrupted run {straight_seconds:.1f} s; replay of the joined log {replay_seconds:.1f} s; "
          f"seed {seed}; total {elapsed:.1f} s")
    print(f"  uninterrupted: {reference}")
    print(f"  killed {kills}x : {finished}")
    print(f"  joined log   : {replay_line}")
    if not args.workdir:
        shutil.rmtree(root, ignore_errors=True)
    if not same:
        sys.exit("FAIL: the resumed run's parameters differ from the uninterrupted run's")
    if kills > 0 and in_save == 0:
        sys.exit("FAIL: no kill landed inside a checkpoint write; the test did not exercise atomic saves")
    if not same_replay or replay_steps != args.steps or replay_truncated != "0":
        sys.exit(f"FAIL: the joined log replays to other parameters or steps than the run's ({replay_line})")
    if kills >= 8 and torn == 0:
        sys.exit("FAIL: no log was torn after a kill; the test did not exercise a record cut off mid-write")
    print("PASS: every resume started from the latest completed save; bit-identical parameters after every kill and resume; "
          "the joined log replays to them bit for bit")


if __name__ == "__main__":
    main()
