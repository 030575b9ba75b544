"""The device half over SSH: copy a pack to a device, time it there with `pathnas-infer profile`,
copy the timings back (nn-Meter and Qualcomm AI Hub reach their devices the same way).

The system's OpenSSH client (``ssh``, ``scp``) does the transport, with the user's keys, agent
and ~/.ssh/config: no protocol code here. Every failure is one line naming the host and what
to do; the remote working folder is removed whatever happens, and the timings are only
returned once they have been read back whole and checked against the pack.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import tempfile
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

    def time_pack(self, pack: Path, out: Path, rounds: int | None = None) -> dict:
        """Time ``pack`` on the device; the timings are copied to ``out`` and returned, checked."""
        made = self.ssh(["mktemp", "-d", "/tmp/pathnas-profile.XXXXXX"], "make a working folder")
        folder = made.stdout.strip()
        if made.returncode != 0 or not folder.startswith("/tmp/pathnas-profile."):
            raise RemoteError(f"{self.host}: cannot make a working folder in /tmp ({last_line(made.stderr)})")
        try:
            self.check()
            self._run(["scp", "-r", "-q", *self._options(), str(pack), f"{self.host}:{folder}/pack"], "copy the pack")
            command = [self.infer, "profile", f"{folder}/pack", "--out", f"{folder}/{TIMINGS_FILE}", "--json",
                       *(["--rounds", str(rounds)] if rounds else [])]
            timed = self.ssh(command, "time the pack")
            if timed.returncode != 0:
                raise RemoteError(f"{self.host}: `pathnas-infer profile` failed: {last_line(timed.stderr)} "
                                  f"(is the profile's runtime installed there? {INSTALL_HINT})")
            with tempfile.TemporaryDirectory(prefix="pathnas-timings-") as tmp:
                local = Path(tmp) / TIMINGS_FILE
                self._run(["scp", "-q", *self._options(), f"{self.host}:{folder}/{TIMINGS_FILE}", str(local)],
                          "copy the timings back")
                timings = read_timings(local, pack)
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(local, out)
            return timings
        finally:
            try:
                self.ssh(["rm", "-rf", folder], "remove its working folder")
            except RemoteError:  # the connection broke: the first error is the one to report
                pass
