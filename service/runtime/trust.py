"""MODEL_TRUST: whether a version's manifest must be vouched for from outside the repository.

The manifest holds the sha256 of every other file, so vouching for the manifest's bytes
vouches for the whole version.

- none: the repository is trusted as it is (its files are still checked against the manifest).
- digest-pinned: MODEL_DIGESTS_FILE, kept outside the repository, lists the sha256 of each
  allowed manifest, in `sha256sum` format (`<hex>  <name>/<version>/manifest.json`).
- signed: `manifest.json.sig` beside the manifest is an Ed25519 signature of its bytes
  (base64), checked with the public key in MODEL_TRUST_KEY_FILE (base64 of its 32 bytes, as
  `torchdock trust keygen` writes it). Signing and checking are libsodium's (PyNaCl).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nacl.exceptions import BadSignatureError, CryptoError
from nacl.signing import SigningKey, VerifyKey

from service.runtime.errors import ModelLoadError

TrustMode = Literal["none", "digest-pinned", "signed"]
SIGNATURE_FILE = "manifest.json.sig"


@dataclass(frozen=True)
class TrustPolicy:
    mode: TrustMode = "none"
    digests_file: Path | None = None
    public_key_file: Path | None = None

    def verify(self, name: str, version: int, manifest_bytes: bytes, directory: Path) -> None:
        """Raise ModelLoadError unless the manifest's bytes are vouched for."""
        where = f"{name}/{version}"
        if self.mode == "digest-pinned":
            assert self.digests_file is not None
            pinned = read_digests(self.digests_file).get(f"{where}/manifest.json")
            actual = hashlib.sha256(manifest_bytes).hexdigest()
            if pinned is None:
                raise ModelLoadError(
                    f"{where}: not in MODEL_DIGESTS_FILE (MODEL_TRUST=digest-pinned)"
                )
            if pinned != actual:
                raise ModelLoadError(f"{where}: manifest sha256 is not the pinned one")
        elif self.mode == "signed":
            assert self.public_key_file is not None
            key = load_public_key(self.public_key_file)
            try:
                encoded = (directory / SIGNATURE_FILE).read_bytes().strip()
                signature = base64.b64decode(encoded, validate=True)
                key.verify(manifest_bytes, signature)
            except FileNotFoundError:
                raise ModelLoadError(f"{where}: no {SIGNATURE_FILE} (MODEL_TRUST=signed)") from None
            except (BadSignatureError, binascii.Error, ValueError):
                raise ModelLoadError(f"{where}: the manifest's signature is not valid") from None


def read_digests(path: Path) -> dict[str, str]:
    """`sha256sum` lines: `<hex>  <path>` (a `*` before the path, binary mode, is allowed)."""
    digests: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError as e:
        raise ModelLoadError(f"MODEL_DIGESTS_FILE unreadable: {e}") from e
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        digest, _, name = line.partition(" ")
        digests[name.strip().lstrip("*")] = digest.lower()
    return digests


def digest_lines(repository: Path) -> list[str]:
    """MODEL_DIGESTS_FILE lines pinning every version's manifest in `repository` as it is."""
    from service.runtime.repository import discover, sha256_file

    return [
        f"{sha256_file(ref.path / 'manifest.json')}  {ref.name}/{ref.version}/manifest.json"
        for refs in discover(repository).values()
        for ref in refs
    ]


def load_public_key(path: Path) -> VerifyKey:
    try:
        return VerifyKey(_key_bytes(path))
    except (OSError, ValueError, CryptoError) as e:
        raise ModelLoadError(f"MODEL_TRUST_KEY_FILE: not an Ed25519 public key: {e}") from e


def generate_key_pair(private_path: Path, public_path: Path) -> None:
    """A new Ed25519 key pair, each key base64 in a file; the private one readable by its
    owner only. Raises FileExistsError rather than replace a key."""
    key = SigningKey.generate()
    with private_path.open("x") as private:  # created, never overwritten
        private_path.chmod(0o600)
        private.write(base64.b64encode(bytes(key)).decode() + "\n")
    public_path.write_text(base64.b64encode(bytes(key.verify_key)).decode() + "\n")


def sign_version(directory: Path, private_key_file: Path) -> Path:
    """Write `manifest.json.sig` for the version in `directory`."""
    try:
        key = SigningKey(_key_bytes(private_key_file))
    except CryptoError as e:
        raise ValueError(f"{private_key_file}: not an Ed25519 private key: {e}") from e
    signature = key.sign((directory / "manifest.json").read_bytes()).signature
    target = directory / SIGNATURE_FILE
    target.write_bytes(base64.b64encode(signature) + b"\n")
    return target


def _key_bytes(path: Path) -> bytes:
    try:
        return base64.b64decode(path.read_bytes().strip(), validate=True)
    except binascii.Error as e:
        raise ValueError(f"{path}: not base64") from e
