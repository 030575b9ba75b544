"""`profile measure --remote HOST`: the device half over real SSH, to an sshd this test starts on
127.0.0.1 with a throwaway host key and client key (skipped, saying why, where there is no sshd)."""
from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bundle_helpers import bundle, classify_run, copy_bundle, flip_a_byte  # noqa: F401 (fixtures)
from cli_helpers import pathnas_edge
from pathnas.profiling import load_table
from pathnas.spaces import build_supernet, space_config

SSHD = shutil.which("sshd") or next((p for p in ("/usr/sbin/sshd", "/usr/local/sbin/sshd") if os.path.exists(p)), None)
KNOBS = ["--space", "shufflenet", "--input-size", "32", "--width-mult", "0.25", "--num-classes", "4",
         "--option", "stage_repeats=[1,1,1,1]"]
pytestmark = pytest.mark.skipif(SSHD is None or shutil.which("ssh") is None or shutil.which("ssh-keygen") is None,
                                reason="needs OpenSSH's sshd, ssh and ssh-keygen (apt-get install -y openssh-server)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sftp_server() -> str | None:
    return next((p for p in ("/usr/lib/openssh/sftp-server", "/usr/libexec/openssh/sftp-server",
                             "/usr/lib/ssh/sftp-server") if os.path.exists(p)), None)


@pytest.fixture(scope="module")
def ssh_host(tmp_path_factory):
    """An sshd on 127.0.0.1 accepting one throwaway key; returns (ssh_config file, host alias, folder)."""
    root = tmp_path_factory.mktemp("ssh")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(root / name)], check=True)
    (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
    os.chmod(root / "authorized_keys", 0o600)
    port = free_port()
    sftp = sftp_server()
    (root / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}", "StrictModes no",
        "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
        "PermitRootLogin prohibit-password", *([f"Subsystem sftp {sftp}"] if sftp else []), ""]))
    Path("/run/sshd").mkdir(exist_ok=True) if os.geteuid() == 0 else None  # sshd's privilege-separation folder
    log = open(root / "sshd.log", "w")
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(root / "sshd_config")], stdout=log, stderr=log)
    for _ in range(100):
        if server.poll() is not None:
            break
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    if server.poll() is not None:
        pytest.skip(f"sshd could not be started here: {(root / 'sshd.log').read_text().strip()[-300:]}")
    common = ["HostName 127.0.0.1", f"User {getpass.getuser()}", f"IdentityFile {root / 'client_key'}",
              "IdentitiesOnly yes", "StrictHostKeyChecking no", "UserKnownHostsFile /dev/null", "LogLevel ERROR"]
    (root / "ssh_config").write_text("\n".join(
        ["Host device", f"  Port {port}", *(f"  {c}" for c in common),
         "Host dead", f"  Port {free_port()}", *(f"  {c}" for c in common), ""]))
    # pathnas-infer as the device has it: this checkout's runtime (the remote shell's PATH lacks the venv)
    infer = root / "bin" / "pathnas-infer"
    infer.parent.mkdir()
    infer.write_text(f"#!/bin/sh\nexec {sys.executable} -m pathnas.deploy.toolkit \"$@\"\n")
    infer.chmod(0o755)
    try:
        yield root / "ssh_config", infer, root
    finally:
        server.terminate()
        server.wait(timeout=10)
        log.close()


def remote_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("pathnas-profile.*")}


def test_measure_over_ssh_assembles_the_table_and_leaves_nothing_there(ssh_host, tmp_path):
    config, infer, _ = ssh_host
    before = remote_dirs()
    out = tmp_path / "table.json"
    code, stdout, err = pathnas_edge("profile", "measure", "--device", "cpu", *KNOBS, "--remote", "device",
                                     "--ssh-config", config, "--remote-infer", infer, "--subnets", "4",
                                     "--fit-subnets", "3", "--rounds", "1", "--out", out, "--json")
    assert code == 0, err
    report = json.loads(stdout)
    table = load_table(out)
    net = build_supernet(space_config("shufflenet", **{"width_mult": 0.25, "input_size": 32, "num_classes": 4,
                                                       "stage_repeats": (1, 1, 1, 1)}))
    assert set(table["parts"]) == {p.key for p in net.latency_parts()} and report["parts_timed"] == len(table["parts"])
    assert table["metadata"]["execution_providers"] == ["CPUExecutionProvider"] and len(table["end_to_end"]) == 4
    assert remote_dirs() == before  # the remote working folder is removed


def test_an_unreachable_host_is_one_line_and_writes_nothing(ssh_host, tmp_path):
    config, infer, _ = ssh_host
    out = tmp_path / "table.json"
    code, _, err = pathnas_edge("profile", "measure", "--device", "cpu", *KNOBS, "--remote", "dead",
                                "--ssh-config", config, "--remote-infer", infer, "--subnets", "4", "--fit-subnets", "3",
                                "--rounds", "1", "--out", out)
    assert code == 2 and "cannot reach dead over SSH" in err and "SSH server" in err
    assert "Traceback" not in err and not out.exists()


def test_a_device_without_pathnas_infer_is_told_what_to_install(ssh_host, tmp_path):
    config, _, root = ssh_host
    out = tmp_path / "table.json"
    code, _, err = pathnas_edge("profile", "measure", "--device", "cpu", *KNOBS, "--remote", "device",
                                "--ssh-config", config, "--remote-infer", root / "missing" / "pathnas-infer",
                                "--subnets", "4", "--fit-subnets", "3", "--rounds", "1", "--out", out)
    assert code == 2 and "device: " in err and "is not installed there" in err
    assert "pip install 'pathnas-edge[runtime]'" in err and not out.exists()


def test_a_runtime_error_on_the_device_is_reported_with_the_host(ssh_host, tmp_path):
    config, _, root = ssh_host
    broken = root / "bin" / "broken-infer"
    broken.write_text("#!/bin/sh\necho 'error: openvino is not installed here' >&2\nexit 2\n")
    broken.chmod(0o755)
    out = tmp_path / "table.json"
    code, _, err = pathnas_edge("profile", "measure", "--device", "cpu", *KNOBS, "--remote", "device",
                                "--ssh-config", config, "--remote-infer", broken, "--subnets", "4",
                                "--fit-subnets", "3", "--rounds", "1", "--out", out)
    assert code == 2 and "device: `pathnas-infer profile` failed: error: openvino is not installed here" in err
    assert not out.exists()


# -- `regress --remote HOST`: a bundle's latency check on the device -----------------------------------

def regress_dirs() -> set[str]:
    return {p.name for p in Path("/tmp").glob("pathnas-regress.*")}


def test_regress_over_ssh_measures_a_baseline_there_and_checks_against_it(ssh_host, bundle, tmp_path):
    config, infer, _ = ssh_host
    link = ["--remote", "device", "--ssh-config", config, "--remote-infer", infer]
    copy = copy_bundle(bundle, tmp_path / "b")
    before = regress_dirs()
    own = tmp_path / "workstation.baseline.json"
    code, out, err = pathnas_edge("regress", copy, *link, "--update-baseline", "--baseline", own, "--rounds", "1")
    assert code == 0, err
    assert f"baseline measured on device written to {own}" in out.replace("\n", "")
    baseline = json.loads(own.read_text())
    assert baseline["bundle"] == "b" and len(baseline["samples_ms"]) == len(baseline["reference_samples_ms"])
    # marked so that its use shows: 7x every sample (the ratios the verdict uses stay as measured)
    own.write_text(json.dumps({**baseline, **{k: [7 * v for v in baseline[k]]
                                              for k in ("samples_ms", "reference_samples_ms")}}))
    junit = tmp_path / "regress.xml"
    code, out, err = pathnas_edge("regress", copy, *link, "--baseline", own, "--rounds", "1", "--json",
                                  "--junit", junit)
    assert code in (0, 1), err
    verdict = json.loads(out)
    assert verdict["host"] == "device" and verdict["device"] == "x86-cpu-ort" and verdict["method"] == "reference"
    assert code == (0 if verdict["passed"] else 1)
    assert verdict["baseline_median_ms"] == pytest.approx(7 * baseline["median_ms"], rel=1e-3)  # --baseline carried
    assert 'tests="1"' in junit.read_text() and "b@x86-cpu-ort on device" in junit.read_text()
    assert regress_dirs() == before  # the remote working folders are removed


def test_regress_over_ssh_reports_what_the_device_refused_in_one_line(ssh_host, bundle, tmp_path):
    config, infer, _ = ssh_host
    copy = copy_bundle(bundle, tmp_path / "b")
    flip_a_byte(copy / json.loads((copy / "manifest.json").read_text())["model"]["default"])
    junit = tmp_path / "regress.xml"
    code, _, err = pathnas_edge("regress", copy, "--remote", "device", "--ssh-config", config, "--remote-infer",
                                infer, "--rounds", "1", "--junit", junit)
    assert code == 2 and "device: `pathnas-infer regress` failed: " in err and "SHA-256" in err, err
    assert "Traceback" not in err and "<error" in junit.read_text()
    code, _, err = pathnas_edge("regress", tmp_path / "model.onnx", "--remote", "device", "--ssh-config", config)
    assert code == 2 and "--remote checks a bundle folder" in err


def test_a_baseline_from_the_device_is_checked_before_it_is_written(ssh_host, bundle, tmp_path):
    config, _, root = ssh_host
    liar = root / "bin" / "lying-infer"  # answers --update-baseline with a file that is no baseline
    liar.write_text('#!/bin/sh\nfor a; do [ "$prev" = --baseline ] && echo \'{"schema": "x"}\' > "$a"; prev=$a; done\n')
    liar.chmod(0o755)
    out = tmp_path / "b.baseline.json"
    code, _, err = pathnas_edge("regress", copy_bundle(bundle, tmp_path / "b"), "--remote", "device", "--ssh-config",
                                config, "--remote-infer", liar, "--update-baseline", "--baseline", out)
    assert code == 2 and "the baseline device measured" in err and "not a latency baseline" in err, err
    assert not out.exists()


def test_a_verdict_from_a_device_is_checked_before_it_is_believed():
    from pathnas.deploy.regress_stats import Verdict, compare

    good = compare([1.0] * 10, [1.0] * 10).as_dict()
    assert Verdict.from_record(json.loads(json.dumps(good)), "x") == compare([1.0] * 10, [1.0] * 10)
    for bad, field in (({**good, "passed": "yes"}, "passed"), ({**good, "ratio": None}, "ratio"),
                       ({**good, "method": "eval"}, "method"), ({**good, "baseline_model": ["a"]}, "baseline_model")):
        with pytest.raises(ValueError, match=f"the verdict's {field}"):
            Verdict.from_record(bad, "the verdict from device")
    with pytest.raises(ValueError, match="not a JSON object"):
        Verdict.from_record([good], "x")
