"""Many workers on one output folder: every slide done exactly once, whatever happens to the workers.

Workers are real `pathnas-infer` processes (a killed one, two started at once, a full disk); the
claim-file cases are files left as a dead worker leaves them. Nothing waits for a machine's speed:
a worker is killed once it says it is mid-slide, and takeover is fast because a dead PID on this
host is seen at once (--heartbeat 0.2 makes the others look again quickly)."""
from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from bundle_helpers import bundle, read_csv, run_infer_capture, run_infer_here, write_slide  # noqa: F401
from pathnas.deploy.claims import in_shard, shard_from_environment, shard_key
from pathnas.errors import ConfigError

FAST = ("--heartbeat", "0.2", "--claim-timeout", "60")
DONE_LINE = re.compile(r"^(\S+): \d+ of \d+ tiles classified", re.M)
TIMING = {"seconds", "tiles_per_s", "worker", "workers", "written_at"}  # what two equal runs write differently

# A worker process with a fault: `hang:FILE` stops mid-slide (after 3 batches of its first slide), writes
# FILE and waits to be killed; `enospc:N` has the disk fill during its Nth whole-file write (its temporary
# file half-written, as a full disk leaves it). Then `pathnas-infer ARGS`.
WORKER = textwrap.dedent("""
    import errno, os, signal, sys
    from pathlib import Path
    from pathnas import io as pio
    from pathnas.deploy import infer, toolkit
    fault, argv = sys.argv[1], sys.argv[2:]
    if fault.startswith("hang:"):
        marker, real = Path(fault[5:]), infer.read_batches
        def hanging(*args, **kwargs):
            for i, batch in enumerate(real(*args, **kwargs)):
                if i == 3:
                    marker.write_text(str(os.getpid()))
                    while True:
                        signal.pause()
                yield batch
        infer.read_batches = hanging
    elif fault.startswith("enospc:"):
        limit, calls, real = int(fault[7:]), [0], infer.write_bytes_atomic
        def filling(path, data):
            calls[0] += 1
            if calls[0] < limit:
                return real(path, data)
            with pio.atomic_path(path) as tmp:
                Path(tmp).write_bytes(data[:len(data) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        infer.write_bytes_atomic = filling
    toolkit.main(argv)
""")


def _folder(folder: Path, n: int) -> Path:
    folder.mkdir()
    for i in range(n):  # 256 px, no resolution stated: 10 x 10 tiles of 32 px, half of them tissue or more
        write_slide(folder / f"s{i:02d}.tif", side=256, tile=128, tissue=0.5 + 0.04 * i, seed=i)
    return folder


def _worker(bundle: Path, slides: Path, out: Path, *extra: str, fault: str = "none") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WORKER, fault, str(bundle), str(slides), "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(marker: Path, proc: subprocess.Popen, limit_s: float = 600) -> None:
    """Until the worker says it is mid-slide (a deadline for a hung test, not a guess at a speed)."""
    deadline = time.monotonic() + limit_s
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the worker ended before it was mid-slide:\n{proc.stderr.read()}")
        assert time.monotonic() < deadline, "the worker never got mid-slide"
        time.sleep(0.05)


def _done(*errs: str) -> Counter:
    """Slides each worker's console says it classified (file names)."""
    return Counter(Path(m).name for err in errs for m in DONE_LINE.findall(err))


def _strip(obj):
    if isinstance(obj, dict):
        return {k: _strip(v) for k, v in obj.items() if k not in TIMING}
    if isinstance(obj, list):
        return [_strip(v) for v in obj]
    return obj


def _snapshot(out: Path) -> dict[str, object]:
    """Every file of an output folder: bytes, except the records, whose timing fields are left out (and the
    output folder's own path, which the rows name, is written OUT). Worker records, claims and the HTML report
    (it shows the seconds and the workers) are who and when."""
    files = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if not path.is_file() or rel.split("/")[0] in ("workers", "claims") or rel == "report.html":
            continue
        data = path.read_bytes()
        if path.suffix == ".json" and (path.parent.name in ("done", "slides") or path.name == "run_metadata.json"):
            files[rel] = _strip(json.loads(data.decode().replace(str(out), "OUT")))
        elif path.name == "results.csv":
            rows = list(csv.DictReader(io.StringIO(data.decode().replace(str(out), "OUT"))))
            files[rel] = [_strip(r) for r in rows]
        else:
            files[rel] = data
    return files


def test_three_workers_one_killed_mid_slide_do_every_slide_once_as_one_worker_does(bundle, tmp_path):
    slides = _folder(tmp_path / "slides", 12)
    names = {f"s{i:02d}.tif" for i in range(12)}
    code, err = run_infer_here(bundle, slides, "--out", tmp_path / "single")
    assert code == 0, err
    out, marker = tmp_path / "multi", tmp_path / "mid-slide"
    victim = _worker(bundle, slides, out, *FAST, fault=f"hang:{marker}")
    _wait_for(marker, victim)
    others = [_worker(bundle, slides, out, *FAST) for _ in range(2)]
    victim.send_signal(signal.SIGKILL)
    _, victim_err = victim.communicate()
    results = [p.communicate(timeout=900) for p in others]
    assert [p.returncode for p in others] == [0, 0], results
    errs = [victim_err] + [e for _, e in results]
    assert _done(*errs) == Counter(names)  # every slide classified exactly once, over the three workers
    takeovers = [line for e in errs for line in e.splitlines() if "taking over the slide" in line]
    assert len(takeovers) == 1 and f"(PID {victim.pid}) is no longer running" in takeovers[0], takeovers
    assert not list(out.rglob("*.claim")) and not list(out.rglob("*.tmp"))  # nothing held, nothing half-written
    # the folder equals one worker's, byte for byte apart from timing and which worker did what
    single, multi = _snapshot(tmp_path / "single"), _snapshot(out)
    assert single.keys() == multi.keys()
    assert [k for k in single if single[k] != multi[k]] == []
    meta = json.loads((out / "run_metadata.json").read_text())
    assert meta["finished"] and meta["inputs"] == 12 and len(meta["workers"]) in (2, 3)


def test_shards_cover_the_folder_exactly_once(bundle, tmp_path, monkeypatch):
    slides, out = _folder(tmp_path / "slides", 12), tmp_path / "out"
    done = []
    for k in (1, 2, 3):
        code, err = run_infer_here(bundle, slides, "--out", out, "--shard", f"{k}/3")
        assert code == 0, err
        done.append(set(_done(err)))
        assert f"shard {k}/3 (--shard): {len(done[-1])} of 12 input(s)" in err
    assert all(done) and sum(map(len, done)) == 12 and set.union(*done) == {f"s{i:02d}.tif" for i in range(12)}
    assert len(read_csv(out / "results.csv")) == 12  # the last shard's summary covers the whole folder
    # the summary made again from the records alone, as `pathnas-infer summary OUT` does: the same
    before = _snapshot(out)
    (out / "results.csv").unlink()
    (out / "run_metadata.json").unlink()
    code, text, err = run_infer_capture("summary", out)
    assert code == 0 and "12 input(s): 12 ok; results in" in text, err
    assert _snapshot(out) == before
    # a SLURM array task or a Kubernetes Indexed Job's pod finds its shard itself; a re-submitted one redoes nothing
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "5")
    monkeypatch.setenv("SLURM_ARRAY_TASK_STEP", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 0 and f"shard 2/3 (SLURM array task 7 of 3): {len(done[1])} of 12 input(s)" in err
    assert not _done(err)
    assert shard_from_environment({"JOB_COMPLETION_INDEX": "0"}, 4)[0] == (1, 4)
    with pytest.raises(ConfigError, match="give --shard-count N"):
        shard_from_environment({"JOB_COMPLETION_INDEX": "0"})
    # the hash is SHA-256 of the relative path: the same on every machine and in every Python
    assert shard_key("case-001/slide.svs") == 0x5C99C206249DEE13 and in_shard("case-001/slide.svs", (2, 2))


def test_two_workers_started_at_once_on_one_slide(bundle, tmp_path):
    slides = tmp_path / "slides"
    slides.mkdir()
    write_slide(slides / "only.tif", side=512, tile=128, tissue=0.75)
    workers = [_worker(bundle, slides, tmp_path / "out", *FAST) for _ in range(2)]
    results = [p.communicate(timeout=900) for p in workers]
    assert [p.returncode for p in workers] == [0, 0], results
    errs = [e for _, e in results]
    assert _done(*errs) == Counter({"only.tif": 1})
    other = next(e for e in errs if not _done(e))
    assert "done by another worker of this batch; skipped" in other or "done before" in other
    assert not list((tmp_path / "out").rglob("*.claim"))


def test_claims_left_by_gone_workers_are_taken_over_and_another_batch_is_refused(bundle, tmp_path):
    slides, out = _folder(tmp_path / "slides", 6), tmp_path / "out"
    claims = out / "claims"
    claims.mkdir(parents=True)
    (claims / "s00.0.claim").write_bytes(b"")  # its writer died between the create and the write
    (claims / "s01.0.claim").write_text('{"host": "scanner-2", "pi')  # garbled
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (claims / "s02.0.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": int(gone.stdout)}))
    (claims / "s03.0.claim").write_text(json.dumps({"host": "scanner-2", "pid": 4242}))  # another host, silent
    hung = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])  # alive, but no heartbeat
    (claims / "s05.0.claim").write_text(json.dumps({"host": socket.gethostname(), "pid": hung.pid}))
    hour_ago = time.time() - 3600
    for name in ("s00", "s01", "s03", "s05"):
        os.utime(claims / f"{name}.0.claim", (hour_ago, hour_ago))
    # the hidden temporaries killed workers left: a claimed slide's, an unclaimed one's, an old summary's; and a
    # summary's being written now (a live worker's, whose end it may be: kept)
    (out / "tiles").mkdir()
    left = [out / "tiles" / ".s03_tiles.csv.k1ll3d.tmp", out / "tiles" / ".s04_heatmap_normal.png.x.tmp",
            out / ".results.csv.0ld.tmp"]
    for path in left + [out / ".results.csv.n0w.tmp"]:
        path.write_text("half")
    os.utime(out / ".results.csv.0ld.tmp", (hour_ago, hour_ago))
    try:
        code, err = run_infer_here(bundle, slides, "--out", out)
    finally:
        hung.kill()
        hung.wait()
    assert code == 0, err
    assert re.search(rf"s05: taking over the slide from {re.escape(socket.gethostname())} PID {hung.pid}: no heartbeat", err)
    assert not any(p.exists() for p in left) and (out / ".results.csv.n0w.tmp").exists()
    assert "removed 2 temporary file(s) a killed run left" in err  # s03's when it was taken over
    assert len(re.findall(r"s0[01]: taking over the slide from an unreadable claim: an empty or unreadable claim "
                          r"36\d\d s old", err)) == 2
    assert f"s02: taking over the slide from {socket.gethostname()} PID {gone.stdout.strip()}: its process" in err
    assert re.search(r"s03: taking over the slide from scanner-2 PID 4242: no heartbeat for 36\d\d s \(over "
                     r"--claim-timeout 300 s\)", err)
    assert len(_done(err)) == 6 and not list(claims.iterdir())
    # a live worker of another batch (other settings) in the folder: refused in one line naming what differs
    run = json.loads((out / "done" / "s00.json").read_text())["run"]
    live = {"host": "scanner-2", "pid": 4242, **run, "settings": {**run["settings"], "min_tissue": 0.5}}
    (claims / "s00.0.claim").write_text(json.dumps(live))
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 2 and len([line for line in err.splitlines() if line.startswith("error:")]) == 1
    assert "is being written by scanner-2 PID 4242 (claim s00.0.claim) with another bundle or other settings: " \
           "min_tissue 0.5 there, 0.2 here" in err


def test_a_slide_deleted_while_queued_is_left_out(bundle, tmp_path, monkeypatch):
    from pathnas.deploy import infer

    slides, out = _folder(tmp_path / "slides", 4), tmp_path / "out"
    real = infer.open_image

    def deleting(path, *args, **kwargs):
        (slides / "s02.tif").unlink(missing_ok=True)  # removed from the folder once the batch has started
        return real(path, *args, **kwargs)

    monkeypatch.setattr(infer, "open_image", deleting)
    code, err = run_infer_here(bundle, slides, "--out", out)
    assert code == 0 and f"{slides / 's02.tif'}: no longer exists (removed after the batch started): left out" in err
    assert set(_done(err)) == {"s00.tif", "s01.tif", "s03.tif"}
    assert [Path(r["input"]).name for r in read_csv(out / "results.csv")] == ["s00.tif", "s01.tif", "s03.tif"]


def _mount_tmpfs(path: Path, size: int) -> bool:
    path.mkdir()
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_a_full_disk_stops_the_worker_and_loses_nothing(bundle, tmp_path, disk):
    """On a real full disk (a small tmpfs, where this test may mount one: root) or an injected ENOSPC."""
    slides = _folder(tmp_path / "slides", 4)
    probe = tmp_path / "probe"
    code, err = run_infer_here(bundle, slides / "s00.tif", "--out", probe)
    assert code == 0, err
    per_slide = sum(p.stat().st_size for p in probe.rglob("*") if p.is_file())
    out = tmp_path / "out"
    if disk == "tmpfs" and not _mount_tmpfs(out, -(-int(2.5 * per_slide) // 4096) * 4096):
        pytest.skip("cannot mount a tmpfs here (needs root): the injected case covers it")
    try:
        fault = "enospc:4" if disk == "injected" else "none"  # injected: the 2nd slide's thumbnail (heatmap, thumbnail)
        first = _worker(bundle, slides, out, *FAST, fault=fault)
        _, err1 = first.communicate(timeout=900)
        assert first.returncode == 2 and "error: no space left on the device writing " in err1, err1
        assert "Traceback" not in err1 and "free space and run again" in err1
        assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.claim"))  # nothing half-written, nothing held
        for record in (out / "done").glob("*.json"):
            assert json.loads(record.read_text())["row"]["status"] == "ok"  # not a failure of the slide
        if disk == "tmpfs":
            subprocess.run(["mount", "-o", "remount,size=64m", str(out)], check=True)
        second = _worker(bundle, slides, out, *FAST)
        _, err2 = second.communicate(timeout=900)
        assert second.returncode == 0, err2
        assert _done(err1, err2) == Counter(f"s{i:02d}.tif" for i in range(4))  # each slide once, over both
        assert len(read_csv(out / "results.csv")) == 4 and not list(out.rglob("*.tmp"))
    finally:
        if disk == "tmpfs":
            subprocess.run(["umount", str(out)], capture_output=True)
