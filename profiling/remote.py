"""The device half over SSH: copy a pack (or a bundle) to a device, run `pathnas-infer profile`
(or `pathnas-infer regress`) there, copy the result back (nn-Meter and Qualcomm AI Hub reach
their devices the same way).

The system's OpenSSH client (``ssh``, ``scp``) does the transport, with the user's keys, agent
and ~/.ssh/config: no protocol code here. Every failure is one line naming the host and what
to do; the remote working folder is removed whatever happens, and what comes back is only
returned once it has been read back whole and checked (it is data from another machine).
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pathnas.deploy.child import last_line
from pathnas.deploy.device_profile import TIMINGS_FILE, read_timings
from pathnas.errors import UserError

INSTALL_HINT = "pip install 'pathnas-edge[runtime]' (the torch-free runtime) there"


class RemoteError(UserError):
    """The remote device could not be reached, lacks pathnas-infer, or failed to time the pack."""


@dataclass
class Remote:
    """A device reached over SSH. ``host`` as ssh takes it ([user@]host or a ~/.ssh/config alias);
    ``ssh_config``: an ssh_config(5) file to use instead of the user's; ``infer``: the pathnas-infer
    command there (a path when it is not on the PATH of a non-interactive shell)."""

    host: str
    ssh_config: Path | None = None
    infer: str = "pathnas-infer"
    connect_timeout: int = 15

    def __post_init__(self):
        if not self.host or self.host.startswith("-") or any(c.isspace() for c in self.host):
            raise RemoteError(f"--remote {self.host!r}: give a host as ssh takes it, e.g. user@jetson.local")
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise RemoteError(f"--remote needs the OpenSSH client ({tool}) on this machine: "
                                  f"apt-get install openssh-client")

    def _options(self) -> list[str]:
        config = ["-F", str(self.ssh_config)] if self.ssh_config else []
        return [*config, "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}"]

    def _run(self, argv: list[str], what: str) -> subprocess.CompletedProcess:
        try:
            result = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        except OSError as err:
            raise RemoteError(f"{self.host}: cannot run {argv[0]} ({err})") from None
        if result.returncode == 255 or (argv[0] == "scp" and result.returncode != 0):
            raise RemoteError(f"cannot reach {self.host} over SSH to {what}: {last_line(result.stderr)} "
                              f"(try `ssh {self.host}` by hand; the device needs an SSH server and your key)")
        return result

    def ssh(self, command: list[str], what: str) -> subprocess.CompletedProcess:
        return self._run(["ssh", *self._options(), self.host, "--", shlex.join(command)], what)

    def check(self) -> "Remote":
        """Reach the device and find pathnas-infer there (before anything is exported for it)."""
        found = self.ssh(["sh", "-c", f"command -v {shlex.quote(self.infer)}"], "look for pathnas-infer")
        if found.returncode != 0:
            raise RemoteError(f"{self.host}: {self.infer} is not installed there (or not on the PATH of a "
                              f"non-interactive shell): {INSTALL_HINT}, or pass --remote-infer PATH")
        return self

    @contextmanager
    def _workdir(self, purpose: str):
        """A fresh folder in the device's /tmp, removed afterwards whatever happens."""
        made = self.ssh(["mktemp", "-d", f"/tmp/pathnas-{purpose}.XXXXXX"], "make a working folder")
        folder = made.stdout.strip()
        if made.returncode != 0 or not folder.startswith(f"/tmp/pathnas-{purpose}."):
            raise RemoteError(f"{self.host}: cannot make a working folder in /tmp ({last_line(made.stderr)})")
        try:
            yield folder
        finally:
            try:
                self.ssh(["rm", "-rf", folder], "remove its working folder")
            except RemoteError:  # the connection broke: the first error is the one to report
                pass

    def _put(self, local: Path, remote: str, what: str) -> None:
        self._run(["scp", "-r", "-q", *self._options(), str(local), f"{self.host}:{remote}"], what)

    def _get(self, remote: str, local: Path, what: str) -> None:
        self._run(["scp", "-q", *self._options(), f"{self.host}:{remote}", str(local)], what)

    def _infer(self, command: list[str], what: str, hint: str = "") -> subprocess.CompletedProcess:
        """``pathnas-infer COMMAND...`` there. An exit status other than 0 and 1 (2: a problem the user
        can fix) is one line: the host, the remote's own last error line and ``hint``."""
        done = self.ssh([self.infer, *command], what)
        if done.returncode not in (0, 1):
            raise RemoteError(f"{self.host}: `pathnas-infer {command[0]}` failed: {last_line(done.stderr)}"
                              + (f" ({hint})" if hint else ""))
        return done

    def time_pack(self, pack: Path, out: Path, rounds: int | None = None) -> dict:
        """Time ``pack`` on the device; the timings are copied to ``out`` and returned, checked."""
        with self._workdir("profile") as folder:
            self.check()
            self._put(pack, f"{folder}/pack", "copy the pack")
            hint = f"is the profile's runtime installed there? {INSTALL_HINT}"
            timed = self._infer(["profile", f"{folder}/pack", "--out", f"{folder}/{TIMINGS_FILE}", "--json",
                                 *(["--rounds", str(rounds)] if rounds else [])], "time the pack", hint)
            if timed.returncode != 0:
                raise RemoteError(f"{self.host}: `pathnas-infer profile` failed: {last_line(timed.stderr)} ({hint})")
            with tempfile.TemporaryDirectory(prefix="pathnas-timings-") as tmp:
                local = Path(tmp) / TIMINGS_FILE
                self._get(f"{folder}/{TIMINGS_FILE}", local, "copy the timings back")
                timings = read_timings(local, pack)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, out)
            return timings

    def regress(self, bundle: Path, options: list[str], baseline: Path | None = None,
                trusted_keys: list[Path] | tuple = (), update_baseline: Path | None = None) -> dict:
        """`pathnas-infer regress` of a copy of ``bundle`` on the device, which verifies it (against
        ``trusted_keys``, copied there, or the device's own) and times it beside its reference model.
        ``options``: that command's tolerance, confidence, rounds and --same-model. Returns its JSON
        verdict as a dict (checked by the caller), against ``baseline`` (a file here, copied there;
        default: the bundle's signed one). With ``update_baseline`` (a path here) the device measures
        a baseline instead, which is copied back to that path, checked; returns the baseline."""
        bundle = Path(bundle)
        # the bundle's own name there too: a baseline measured there records it
        name = bundle.name if re.fullmatch(r"[A-Za-z0-9._-]+", bundle.name) and bundle.name[0] != "." else "bundle"
        with self._workdir("regress") as folder:
            self.check()
            self._put(bundle, f"{folder}/{name}", "copy the bundle")
            command = ["regress", f"{folder}/{name}", "--json", *options]
            if baseline is not None or update_baseline is not None:
                command += ["--baseline", f"{folder}/baseline.json"]
            if baseline is not None and update_baseline is None:
                self._put(baseline, f"{folder}/baseline.json", "copy the baseline")
            for i, key in enumerate(trusted_keys):
                there = f"{folder}/key-{i}" + ("" if Path(key).is_dir() else ".pub")  # a key file or a folder of them
                self._put(Path(key), there, "copy a trusted key")
                command += ["--trusted-key", there]
            if update_baseline is not None:
                command.append("--update-baseline")
            done = self._infer(command, "check the bundle's latency")
            if update_baseline is not None:
                return self._fetch_baseline(f"{folder}/baseline.json", update_baseline, bundle)
            try:
                return json.loads(done.stdout)
            except ValueError:
                raise RemoteError(f"{self.host}: `pathnas-infer regress` printed no verdict "
                                  f"({last_line(done.stderr) or 'no error either'})") from None

    def _fetch_baseline(self, remote: str, out: Path, bundle: Path) -> dict:
        """The baseline the device measured, copied back and checked as a check would check it (for the
        bundle's run settings), then written to ``out`` atomically."""
        from pathnas.deploy.manifest import read_manifest
        from pathnas.deploy.device import DeviceSettings
        from pathnas.deploy.regress import check_baseline, save_baseline
        from pathnas.io import read_json

        with tempfile.TemporaryDirectory(prefix="pathnas-baseline-") as tmp:
            local = Path(tmp) / "baseline.json"
            self._get(remote, local, "copy the baseline back")
            baseline = read_json(local, f"the baseline {self.host} measured")
        try:
            check_baseline(baseline, DeviceSettings.from_dict(read_manifest(bundle)["profile"], str(bundle)),
                           f"the baseline {self.host} measured")
        except UserError as err:
            raise RemoteError(str(err)) from None
        save_baseline(out, baseline)
        return baseline
