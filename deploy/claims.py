"""Many workers, one output folder, each slide done once: claims, shards, stale temporaries. Torch-free.

A worker (one `pathnas-infer` process: a second workstation on the same network folder, a task
of a SLURM job array, a pod of a Kubernetes Indexed Job) claims a slide before it reads it by
creating ``claims/<slide>.<generation>.claim`` with an exclusive create (``O_CREAT | O_EXCL``,
then the record is written and fsynced): of two workers only one can create a file, on a local
disk and on NFS v3+ alike. TRIDENT's ``.lock`` files are opened and then written, which races.

The record says who holds the slide: host, PID, start time, bundle SHA-256, model artifact and
settings. While it works the holder renews the claim (the file's modification time: a
heartbeat every ``heartbeat`` seconds, checked at every batch of tiles). A claim whose holder
is gone is taken over, with a line saying so, by creating the next generation (again an
exclusive create, so of two workers taking over only one succeeds):
- on the same host when its PID is no longer running (or is a zombie);
- on any host when its heartbeat is older than ``timeout`` (a hung worker; the hosts' clocks agree, NTP);
- an empty or garbled claim (its writer died between the create and the write) by its age.
A holder that finds a later generation at its next heartbeat was judged gone (it was stalled
longer than the timeout): it drops the slide (``Superseded``) and leaves it to the new holder.
After the slide's done record is written its holder removes its claims, so a worker always
checks for the done record again once it holds a claim.

A live claim made with another bundle or other settings means another batch is running in the
folder: a worker refuses to start beside it (``OtherBatchError``, naming what differs).

``--shard K/N`` keeps the slides whose path relative to the input folder hashes (SHA-256, stable
across machines and Python runs, unlike ``hash()``) to K - 1 modulo N; K and N come from SLURM job
arrays and Kubernetes Indexed Jobs when not given. A shard's worker still claims each slide, so a
re-submitted array task never redoes another's slide.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

from pathnas.errors import ConfigError, UserError

CLAIMS = "claims"
HEARTBEAT_S = 30.0
CLAIM_TIMEOUT_S = 300.0  # ten heartbeats: a worker stalled this long (swapping, a hung NFS mount) is judged gone
IDENTITY = ("bundle_sha256", "artifact", "settings")  # what workers sharing a folder must agree on


class Superseded(Exception):
    """Another worker took this worker's slide over (it judged this worker gone): the slide is theirs now."""


class OtherBatchError(UserError):
    """A live worker in the output folder runs another bundle or other settings."""


@dataclass(frozen=True)
class Worker:
    """Who claims: this process, and what it runs (``run``: bundle SHA-256, artifact and settings)."""

    host: str
    pid: int
    started_at: str
    run: dict = field(hash=False)

    @classmethod
    def here(cls, run: dict) -> "Worker":
        return cls(socket.gethostname(), os.getpid(),
                   dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"), run)

    @property
    def ident(self) -> str:
        """One name per worker, safe in a file name (host, PID and start time: PIDs are reused)."""
        stamp = re.sub(r"[^0-9]", "", self.started_at)[:20]
        return re.sub(r"[^A-Za-z0-9._-]", "_", f"{self.host}-{self.pid}-{stamp}")

    def record(self) -> dict:
        return {"host": self.host, "pid": self.pid, "started_at": self.started_at, "worker": self.ident,
                **{k: self.run[k] for k in IDENTITY}}


def pid_running(pid: int) -> bool:
    """Whether ``pid`` is a running process on this host (a zombie, killed but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def differences(theirs: dict, ours: dict) -> list[str]:
    """What differs between two workers' runs, as 'field: theirs there, ours here'."""
    out = []
    for key in IDENTITY:
        a, b = theirs.get(key), ours.get(key)
        if key == "settings" and isinstance(a, dict) and isinstance(b, dict):
            out += [f"{name} {a.get(name)!r} there, {b.get(name)!r} here"
                    for name in sorted(set(a) | set(b)) if a.get(name) != b.get(name)]
        elif a != b:
            short = (lambda v: v[:12] if isinstance(v, str) and key == "bundle_sha256" else v)
            out.append(f"{key} {short(a)!r} there, {short(b)!r} here")
    return out


@dataclass
class Holder:
    """What a claim file says, and whether its holder is gone (``gone``: why, or '' while it lives)."""

    path: Path
    generation: int
    record: dict | None
    age_s: float
    gone: str

    def who(self) -> str:
        r = self.record or {}
        return f"{r.get('host', '?')} PID {r.get('pid', '?')}" if self.record else "an unreadable claim"


class Claim:
    """A slide this worker holds: ``beat`` it while working on it, ``release`` it after its done record."""

    def __init__(self, claims: "Claims", name: str, generation: int, path: Path):
        self.claims, self.name, self.generation, self.path = claims, name, generation, path
        self.last_beat = time.monotonic()

    def beat(self, force: bool = False) -> None:
        """Renew the claim when a heartbeat is due; Superseded if another worker took the slide over."""
        now = time.monotonic()
        if not force and now - self.last_beat < self.claims.heartbeat:
            return
        self.last_beat = now
        if self.claims.generations(self.name)[-1:] != [self.generation]:
            raise Superseded(f"taken over by another worker (this one was judged gone: it renewed its claim "
                             f"{self.path} too late)")
        try:
            os.utime(self.path)
        except FileNotFoundError:
            raise Superseded(f"its claim {self.path} was removed by another worker") from None

    def release(self) -> None:
        """Remove this claim and the earlier generations it replaced (later ones belong to their holders)."""
        for generation in self.claims.generations(self.name):
            if generation <= self.generation:
                self.claims.path(self.name, generation).unlink(missing_ok=True)


class Claims:
    """The claims of an output folder, as this worker sees and makes them."""

    def __init__(self, out_dir: Path, worker: Worker, heartbeat: float = HEARTBEAT_S,
                 timeout: float = CLAIM_TIMEOUT_S, say=print):
        self.folder, self.worker = Path(out_dir) / CLAIMS, worker
        self.heartbeat, self.timeout, self.say = heartbeat, timeout, say

    def path(self, name: str, generation: int) -> Path:
        return self.folder / f"{name}.{generation}.claim"

    def generations(self, name: str) -> list[int]:
        pattern = re.compile(re.escape(name) + r"\.(\d+)\.claim")
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        return sorted(int(m.group(1)) for m in map(pattern.fullmatch, names) if m)

    def holder(self, name: str, generation: int) -> Holder | None:
        """The claim's record and whether its holder is gone; None if the file has gone meanwhile."""
        path = self.path(name, generation)
        try:
            age = time.time() - path.stat().st_mtime
            text = path.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            text, age = "", 0.0
        try:
            record = json.loads(text)
            if not isinstance(record, dict) or not isinstance(record.get("pid"), int):
                raise ValueError
        except ValueError:  # empty (its writer died between the create and the write) or garbled
            gone = f"an empty or unreadable claim {age:.0f} s old" if age > self.timeout else ""
            return Holder(path, generation, None, age, gone)
        gone = f"no heartbeat for {age:.0f} s (over --claim-timeout {self.timeout:g} s)" if age > self.timeout else ""
        if record.get("host") == self.worker.host and not pid_running(record["pid"]):
            gone = f"its process (PID {record['pid']}) is no longer running"
        return Holder(path, generation, record, age, gone)

    def claim(self, name: str) -> Claim | Holder:
        """This worker's claim on ``name``, or the live holder of the slide. OtherBatchError if that
        holder runs another bundle or other settings."""
        while True:
            generations = self.generations(name)
            if not generations:
                taken = self._create(name, 0)
                if taken is not None:
                    return taken
                continue  # another worker created it first: look at theirs
            current = self.holder(name, generations[-1])
            if current is None:
                continue  # released meanwhile
            if not current.gone:
                self._check_same_batch(current)
                return current
            taken = self._create(name, current.generation + 1)
            if taken is not None:
                self.say(f"{name}: taking over the slide from {current.who()}: {current.gone}")
                return taken
            # another worker took it over first: look at theirs

    def _create(self, name: str, generation: int) -> Claim | None:
        path = self.path(name, generation)
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, json.dumps(self.worker.record(), sort_keys=True).encode())
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return Claim(self, name, generation, path)

    def _check_same_batch(self, holder: Holder) -> None:
        if holder.record is None:
            return
        diff = differences(holder.record, self.worker.run)
        if diff:
            raise OtherBatchError(f"{self.folder.parent} is being written by {holder.who()} "
                                  f"(claim {holder.path.name}) with another bundle or other settings: "
                                  f"{'; '.join(diff)}. Use another --out folder, or wait for it to finish")

    def live(self) -> list[Holder]:
        """Every claim in the folder whose holder is alive (the latest generation of each slide)."""
        try:
            names = os.listdir(self.folder)
        except FileNotFoundError:
            return []
        latest: dict[str, int] = {}
        for n in names:
            m = re.fullmatch(r"(.+)\.(\d+)\.claim", n)
            if m:
                latest[m.group(1)] = max(latest.get(m.group(1), -1), int(m.group(2)))
        holders = [self.holder(name, g) for name, g in sorted(latest.items())]
        return [h for h in holders if h is not None and not h.gone]

    def refuse_other_batches(self) -> None:
        """OtherBatchError if a live worker in the folder runs another bundle or other settings."""
        for holder in self.live():
            self._check_same_batch(holder)


def sweep_stale_temporaries(out_dir: Path, claims: Claims, owners: dict[str, str]) -> list[Path]:
    """Remove the hidden ``.<file>.<random>.tmp`` files a killed worker left in the output folder, only
    those no live worker can be writing: a slide's (``owners``: output file name -> slide name) when
    the slide has no claim (a claimed slide's are the taker-over's to remove), and any file untouched
    for longer than the claim timeout (a live worker writes its streamed files at every batch). The
    temporaries are listed before the claims are looked at: a worker claims a slide before it writes."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.rglob(".*.tmp") if p.parent.name != CLAIMS]
    now, removed = time.time(), []
    for path in found:
        slide = owners.get(path.name[1:-len(".tmp")].rsplit(".", 1)[0])
        try:
            if (slide is not None and not claims.generations(slide)) or now - path.stat().st_mtime > claims.timeout:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:  # its writer renamed or removed it meanwhile
            pass
    return removed


# -- shards -----------------------------------------------------------------------------------------------

def parse_shard(text: str) -> tuple[int, int]:
    """'K/N' (1 <= K <= N) -> (K, N); ConfigError naming the allowed form otherwise."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise ConfigError(f"--shard {text!r}: expected K/N with 1 <= K <= N (e.g. 2/8)")
    return int(m.group(1)), int(m.group(2))


def shard_from_environment(env: dict, count: int | None = None) -> tuple[tuple[int, int], str] | None:
    """(K, N) and where they came from: a SLURM job array task (``SLURM_ARRAY_TASK_ID`` counted from
    ``SLURM_ARRAY_TASK_MIN`` in steps of ``SLURM_ARRAY_TASK_STEP``, of ``SLURM_ARRAY_TASK_COUNT``), or a
    Kubernetes Indexed Job's pod (``JOB_COMPLETION_INDEX``, from 0, of ``count``: the Job's completions).
    None outside both."""
    def number(name: str, default: int | None = None) -> int | None:
        value = env.get(name, "")
        if not value.strip():
            return default
        if not value.strip().isdigit():
            raise ConfigError(f"${name} is {value!r}: expected a whole number")
        return int(value)

    task = number("SLURM_ARRAY_TASK_ID")
    if task is not None:
        tasks = number("SLURM_ARRAY_TASK_COUNT")
        if tasks is None:
            raise ConfigError("$SLURM_ARRAY_TASK_ID is set but $SLURM_ARRAY_TASK_COUNT is not: give --shard K/N")
        first, step = number("SLURM_ARRAY_TASK_MIN", 0), number("SLURM_ARRAY_TASK_STEP", 1) or 1
        k = (task - first) // step + 1
        if not 1 <= k <= tasks:
            raise ConfigError(f"SLURM array task {task} (from {first} in steps of {step}) is not one of "
                              f"{tasks} tasks: give --shard K/N")
        return (k, tasks), f"SLURM array task {task} of {tasks}"
    index = number("JOB_COMPLETION_INDEX")
    if index is not None:
        if count is None:
            raise ConfigError("$JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give --shard-count N, "
                              "the Job's completions")
        if index >= count:
            raise ConfigError(f"$JOB_COMPLETION_INDEX {index} is not below --shard-count {count}")
        return (index + 1, count), f"Kubernetes job completion index {index} of {count}"
    return None


def shard_key(relative: str) -> int:
    """A slide's place among shards: SHA-256 of its path relative to the input folder (POSIX separators),
    the same on every machine and in every run."""
    return int.from_bytes(hashlib.sha256(relative.encode("utf-8")).digest()[:8], "big")


def in_shard(relative: str, shard: tuple[int, int]) -> bool:
    k, n = shard
    return shard_key(relative) % n == k - 1
