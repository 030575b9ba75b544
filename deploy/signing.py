"""Ed25519 signatures of bundle manifests, and the keys a workstation trusts. Torch-free.

The manifest lists the SHA-256 of every other file of a bundle, so a signature over the
manifest's exact bytes covers the whole bundle: whoever changes a model, the labels or the
preprocessing must re-hash the manifest, and then its signature no longer verifies. The
signature is a detached file, ``manifest.sig`` beside the manifest:

    {"schema": "pathnas-bundle-signature/1", "algorithm": "Ed25519", "key": "SHA256:...", "signature": "<base64>"}

``key`` is the fingerprint of the signing key's public half (a hint for people; verification
tries every trusted key). Keys are files in the usual PEM encodings (PKCS#8 private key,
SubjectPublicKeyInfo public key), so OpenSSL and other tools read them too.

Which keys a workstation trusts (the first of these that is given):
  1. ``--trusted-key PATH`` options (a public key file, or a folder of ``*.pub`` / ``*.pem`` files);
  2. the environment variable ``PATHNAS_TRUSTED_KEYS`` (the same, several joined with ``:``);
  3. the folder ``/etc/pathnas-edge/trusted-keys`` when it exists.
With trusted keys, a bundle that is unsigned or signed by any other key is refused. Without
any, bundles are accepted on their hashes alone and every command says they are unsigned.
A configured place that holds no public key is an error, never "trust nothing checked".

``cryptography`` is imported only when a key is made, used or checked.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from pathnas.errors import AlreadyExistsError, ConfigError, InvalidFileError, MissingFileError

MANIFEST = "manifest.json"  # a bundle's manifest (manifest.py reads it): what a signature signs
SIGNATURE = "manifest.sig"
SIGNATURE_SCHEMA = "pathnas-bundle-signature/1"
ALGORITHM = "Ed25519"
# Signed bytes = this prefix + the manifest's bytes: a signature made for anything else with the
# same key (another program's document) can never pass as a bundle signature.
DOMAIN = b"pathnas-bundle-manifest/1\n"
ENV_TRUSTED_KEYS = "PATHNAS_TRUSTED_KEYS"
ENV_PASSPHRASE = "PATHNAS_KEY_PASSPHRASE"  # optional: encrypts new private keys, decrypts them when signing
SYSTEM_TRUSTED_KEYS = Path("/etc/pathnas-edge/trusted-keys")
PUBLIC_SUFFIXES = (".pub", ".pem")


class SignatureError(InvalidFileError):
    """A key or signature that cannot be used; the message names the file."""


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise ConfigError("signed bundles need the `cryptography` package: pip install cryptography") from None
    return serialization, ed25519, InvalidSignature


def fingerprint(public_key) -> str:
    """``SHA256:<base64>`` of the raw 32-byte public key (the form ssh-keygen -l prints)."""
    serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "SHA256:" + base64.b64encode(hashlib.sha256(raw).digest()).decode().rstrip("=")


def _passphrase() -> bytes | None:
    value = os.environ.get(ENV_PASSPHRASE)
    return value.encode() if value else None


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Write ``path`` whole with ``mode``, refusing to replace an existing file (link is atomic and no-clobber)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise AlreadyExistsError(f"{path} already exists; choose another name or remove it") from None
    finally:
        Path(tmp).unlink(missing_ok=True)


def new_keypair(private_path: Path) -> tuple[Path, Path, str]:
    """An Ed25519 key pair: the private key at ``private_path`` (mode 0600; encrypted with
    $PATHNAS_KEY_PASSPHRASE when set) and the public key beside it with ``.pub`` (0644).
    Returns both paths and the fingerprint. Refuses to overwrite either file."""
    serialization, ed25519, _ = _crypto()
    private_path = Path(private_path)
    public_path = Path(f"{private_path}.pub")
    for path in (private_path, public_path):
        if path.exists():
            raise AlreadyExistsError(f"{path} already exists; choose another --out or remove it")
    key = ed25519.Ed25519PrivateKey.generate()
    secret = _passphrase()
    encryption = serialization.BestAvailableEncryption(secret) if secret else serialization.NoEncryption()
    private_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    public_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_new(private_path, private_pem, 0o600)
    try:
        _write_new(public_path, public_pem, 0o644)
    except BaseException:
        private_path.unlink(missing_ok=True)
        raise
    return private_path, public_path, fingerprint(key.public_key())


def _read_key_file(path: Path, what: str) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{what} {path} does not exist")
    try:
        return path.read_bytes()
    except OSError as err:
        raise SignatureError(f"{what} {path}: cannot be read ({err.strerror})") from None


def load_private_key(path: Path):
    """The Ed25519 private key in ``path``; refused when other accounts may read it (like ssh does)."""
    serialization, ed25519, _ = _crypto()
    path = Path(path)
    data = _read_key_file(path, "signing key")
    if b"PRIVATE KEY" not in data:
        raise SignatureError(f"signing key {path}: not a PEM private key (a public key? sign with the private "
                             "half that `pathnas-edge keys new` wrote)")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SignatureError(f"signing key {path}: permissions {mode:04o} let other accounts read it; "
                             f"run `chmod 600 {path}`")
    try:
        key = serialization.load_pem_private_key(data, password=_passphrase())
    except TypeError:  # encrypted without a passphrase, or a passphrase for an unencrypted key
        raise SignatureError(f"signing key {path}: encrypted; set {ENV_PASSPHRASE} to its passphrase") from None
    except ValueError:  # never echo the key or the passphrase
        raise SignatureError(f"signing key {path}: cannot be loaded (a damaged file, or the wrong "
                             f"{ENV_PASSPHRASE})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SignatureError(f"signing key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def load_public_key(path: Path):
    """The Ed25519 public key in ``path`` (PEM SubjectPublicKeyInfo)."""
    serialization, ed25519, _ = _crypto()
    data = _read_key_file(path, "public key")
    if b"PRIVATE KEY" in data:
        raise SignatureError(f"public key {path}: holds a private key; trust its .pub file instead "
                             "(the private key never belongs on a workstation)")
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise SignatureError(f"public key {path}: not a PEM public key") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise SignatureError(f"public key {path}: a {type(key).__name__}, not an Ed25519 key")
    return key


def public_key_pem(private_key_path: Path) -> bytes:
    """The public half of a private key file, PEM (what a workstation is given as KEY.pub)."""
    serialization, _, _ = _crypto()
    return load_private_key(private_key_path).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_fingerprint(path: Path) -> str:
    """Fingerprint of a public key file, or of the public half of a private key file."""
    data = _read_key_file(path, "key")
    key = load_private_key(path).public_key() if b"PRIVATE KEY" in data else load_public_key(path)
    return fingerprint(key)


def sign_manifest(manifest_path: Path, private_key_path: Path, out: Path) -> str:
    """Write the detached signature of ``manifest_path`` to ``out``; returns the key's fingerprint."""
    from pathnas.io import write_json_atomic

    key = load_private_key(private_key_path)
    signature = key.sign(DOMAIN + Path(manifest_path).read_bytes())
    key_id = fingerprint(key.public_key())
    write_json_atomic(out, {"schema": SIGNATURE_SCHEMA, "algorithm": ALGORITHM, "key": key_id,
                            "signature": base64.b64encode(signature).decode()})
    return key_id


# -- what a workstation trusts ------------------------------------------------------------------

@dataclass(frozen=True)
class TrustedKeys:
    """Public keys a bundle must be signed with (none: unsigned bundles are accepted), and where they came from."""

    keys: dict[str, object] = field(default_factory=dict)  # fingerprint -> Ed25519PublicKey
    source: str = ""

    @property
    def configured(self) -> bool:
        return bool(self.keys)


def _key_files(place: Path, origin: str) -> list[Path]:
    if place.is_dir():
        files = sorted(p for p in place.iterdir() if p.is_file() and p.suffix in PUBLIC_SUFFIXES)
        if not files:
            raise ConfigError(f"{origin}: folder {place} holds no public key ({', '.join(PUBLIC_SUFFIXES)} files); "
                              "add the packager's .pub file, or unset it to accept unsigned bundles")
        return files
    if place.is_file():
        return [place]
    raise MissingFileError(f"{origin}: {place} does not exist")


def load_trusted_keys(places: list[Path] | tuple[Path, ...] = (), environ: dict | None = None,
                      system: Path | None = None) -> TrustedKeys:
    """The trusted keys from ``places`` (--trusted-key), else $PATHNAS_TRUSTED_KEYS, else the system folder."""
    environ = os.environ if environ is None else environ
    system = SYSTEM_TRUSTED_KEYS if system is None else system
    if places:
        origin, paths = "--trusted-key", [Path(p) for p in places]
    elif environ.get(ENV_TRUSTED_KEYS):
        origin = ENV_TRUSTED_KEYS
        paths = [Path(p) for p in environ[ENV_TRUSTED_KEYS].split(os.pathsep) if p]
    elif system.is_dir():
        origin, paths = str(system), [system]
    else:
        return TrustedKeys()
    keys = {}
    for place in paths:
        for file in _key_files(place, origin):
            key = load_public_key(file)
            keys[fingerprint(key)] = key
    return TrustedKeys(keys, f"{origin} ({', '.join(map(str, paths))})")


@dataclass(frozen=True)
class SignatureCheck:
    """What the signature of a bundle says: ``problem`` is None when the bundle may be used."""

    status: str  # "trusted", "unsigned", "unchecked" (signed, but no trusted key configured), "refused"
    text: str  # one plain line for people
    key: str | None = None  # fingerprint of the key that signed, when known
    problem: str | None = None


def _read_signature(path: Path) -> tuple[str, bytes]:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise SignatureError(f"{path}: not a signature file ({type(err).__name__})") from None
    if not isinstance(record, dict) or record.get("schema") != SIGNATURE_SCHEMA \
            or record.get("algorithm") != ALGORITHM or not isinstance(record.get("signature"), str) \
            or not isinstance(record.get("key"), str):
        raise SignatureError(f"{path}: not a {SIGNATURE_SCHEMA} file ({ALGORITHM} signature and key fingerprint)")
    try:
        signature = base64.b64decode(record["signature"], validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{path}: the signature is not valid base64") from None
    return record["key"], signature


def check_signature(root: Path, trusted: TrustedKeys) -> SignatureCheck:
    """Judge the signature of the bundle at ``root`` (its manifest.json and manifest.sig) against ``trusted``."""
    root = Path(root)
    sig_path = root / SIGNATURE
    if not sig_path.exists():
        if trusted.configured:
            return SignatureCheck("refused", "unsigned", problem=(
                f"{sig_path}: missing; the bundle is unsigned and this machine trusts only bundles signed by "
                f"{trusted.source}"))
        return SignatureCheck("unsigned", "UNSIGNED: no trusted key is configured, so only the hashes were "
                                          "checked (anyone who can write the bundle could have re-hashed it)")
    try:
        key_id, signature = _read_signature(sig_path)
    except SignatureError as err:
        return SignatureCheck("refused", "bad signature file", problem=str(err))
    if not trusted.configured:
        return SignatureCheck("unchecked", f"signed by {key_id}, NOT checked: no trusted key is configured "
                                           f"(--trusted-key or {ENV_TRUSTED_KEYS})", key=key_id)
    _, _, InvalidSignature = _crypto()
    message = DOMAIN + (root / MANIFEST).read_bytes()
    for fp, key in trusted.keys.items():
        try:
            key.verify(signature, message)
        except InvalidSignature:
            continue
        return SignatureCheck("trusted", f"signed by trusted key {fp}", key=fp)
    why = ("signed by a key that is not trusted here" if key_id not in trusted.keys
           else "the signature does not match the manifest (changed after signing)")
    return SignatureCheck("refused", "signature refused", key=key_id, problem=(
        f"{sig_path}: {why} (signature names {key_id}; trusted: {', '.join(trusted.keys)} from {trusted.source})"))
