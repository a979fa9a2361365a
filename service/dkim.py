"""DKIM signatures (RFC 6376) on every email, and the keys they are made with.

With DKIM_PRIVATE_KEY_PATH, DKIM_SELECTOR and DKIM_DOMAIN set, every Message carries a
`DkimSigner` (service.compose), which mail/ calls on the finished bytes; mail/ itself stays
standard library only. The key is read once, at startup, so a missing or broken key stops
the service there rather than mail later.

dkimpy folds the header and verifies every signature in the tests; its relaxed
canonicalization is done here again in bytes methods (a test holds the two equal: dkimpy's
regular expressions cost more than an Ed25519 signature). The
signature itself is made with `cryptography` (OpenSSL): dkimpy's own RSA is pure Python,
6.7 ms a signature here against 0.27 ms, which alone would cost the dispatch pass far more
than the 25% it may (bench/dispatch.py --dkim), and its Ed25519 needs PyNaCl. dkimpy's
`DKIM.sign` has no seam for that: it parses the key anew on every call and signs inside
`gen_header`, so this module does its few steps itself with dkimpy's pieces.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

import dkim
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils
from dkim import canonicalization

from .config import ConfigError, Settings

# What the signature covers, in this order, where the email has it. RFC 8058 requires both
# List-Unsubscribe headers to be signed, or providers ignore one-click unsubscribing.
SIGNED_HEADERS = (
    b"from",
    b"to",
    b"subject",
    b"date",
    b"message-id",
    b"reply-to",
    b"list-id",
    b"list-unsubscribe",
    b"list-unsubscribe-post",
    b"feedback-id",
    b"mime-version",
    b"content-type",
)
# Every name is listed once more than it is present (RFC 6376 5.4.2: a listed name with no
# field left signs its absence), and Cc, which our emails never carry, once: a header added
# on the way (a second Subject, a Reply-To or List-Unsubscribe of someone else's, a Cc)
# breaks the signature.
OVERSIGNED = (*SIGNED_HEADERS, b"cc")
MIN_RSA_BITS = 1024  # verifiers (dkimpy among them) refuse shorter keys
SIGNATURE_HEADER = b"DKIM-Signature"
NAME_LENGTH = len(SIGNATURE_HEADER) + 2  # 'DKIM-Signature: ' before the first line
# Where one header field ends and the next begins (a continuation line starts with a space).
FIELD_BOUNDARY = re.compile(rb"\r\n(?![ \t])")
SIGNATURE_LINE = 72  # base64 characters of b= on each folded line
FOLD = b"\r\n  "
TXT_STRING_LENGTH = 255  # one character-string in a DNS TXT record

PrivateKey = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def relaxed_header(name: bytes, value: bytes, line_end: bytes = b"\r\n") -> tuple[bytes, bytes]:
    """RFC 6376 3.4.2: a header as relaxed canonicalization hashes it (name in lower case,
    unfolded, tabs and runs of spaces made one space, trimmed), exactly as dkimpy's
    `Relaxed.canonicalize_headers` makes it (a test holds the two together), in bytes
    methods rather than three regular expressions a header: a fifth of the signer's time."""
    value = value.replace(b"\r\n", b"").replace(b"\n", b"").replace(b"\t", b" ")
    while b"  " in value:
        value = value.replace(b"  ", b" ")
    # WSP and stray line-end characters are trimmed, never \x0b or \x0c: RFC 6376 counts no
    # other character as space (dkimpy's strip() does, and strict verifiers then disagree).
    return name.lower().rstrip(b" \t\r\n"), value.strip(b" \t\r\n") + line_end


def relaxed_body(body: bytes) -> bytes:
    """RFC 6376 3.4.4: the body as relaxed canonicalization hashes it (tabs and runs of
    spaces made one space, none at a line's end, no empty lines at the end), exactly as
    dkimpy's `Relaxed.canonicalize_body` makes it (a test holds the two together). dkimpy
    does it with regular expressions that stop at every space: for an HTML email that costs
    about as much as the RSA signature; bytes.replace does it in a fifth of the time."""
    body = body.replace(b"\t", b" ")
    while b"  " in body:
        body = body.replace(b"  ", b" ")
    body = body.replace(b" \r\n", b"\r\n")
    return canonicalization.correct_empty_body(canonicalization.strip_trailing_lines(body))


def _header(unsigned: bytes, signature: bytes) -> bytes:
    folded = FOLD.join(
        signature[start : start + SIGNATURE_LINE]
        for start in range(0, len(signature), SIGNATURE_LINE)
    )
    return SIGNATURE_HEADER + b":" + unsigned + folded + b"\r\n"


@dataclass(frozen=True)
class DkimSigner:
    """Signs finished messages with one key; returns the DKIM-Signature header to put on
    top (see Message.signer)."""

    key: PrivateKey
    selector: str
    domain: str

    @property
    def algorithm(self) -> bytes:
        return b"rsa-sha256" if isinstance(self.key, rsa.RSAPrivateKey) else b"ed25519-sha256"

    def __call__(self, message: bytes) -> bytes:
        """The DKIM-Signature header for `message`. (An RSA-2048 signature costs 0.26 ms in
        OpenSSL, and `cryptography` holds the GIL while it is made: a thread would not run
        it beside the sending loop.)"""
        head, _, body = message.partition(b"\r\n\r\n")
        # Our emails name each header once, so a dict finds the ones to sign (dkimpy's
        # select_headers, made for any mail, costs more than the rest of the headers' work).
        fields = {}
        for field in FIELD_BOUNDARY.split(head):
            name, _, value = field.partition(b":")
            fields[name.lower()] = (name, value)
        signed = [name for name in SIGNED_HEADERS if name in fields]
        body_hash = base64.b64encode(hashlib.sha256(relaxed_body(body)).digest())
        # No t= (signing time): it is optional, and the Date header, signed, says as much.
        tags = [
            (b"v", b"1"),
            (b"a", self.algorithm),
            (b"c", b"relaxed/relaxed"),
            (b"d", self.domain.encode("ascii")),
            (b"s", self.selector.encode("ascii")),
            (b"h", b" : ".join(signed + list(OVERSIGNED))),
            (b"bh", body_hash),
        ]
        # Folded before it is hashed, at spaces only (h= lists its names with spaces around
        # the colons for that): the receiver hashes the header as it arrives.
        unsigned = b" " + dkim.fold(b"; ".join(b"=".join(tag) for tag in tags) + b";", NAME_LENGTH)
        unsigned += b"\r\n b="
        # RFC 6376 3.7: the signed headers, canonicalized, in h='s order, then this header
        # with b= empty and no line end (what dkimpy's hash_headers hashes).
        hasher = hashlib.sha256()
        for name in signed:
            hasher.update(b"%s:%s" % relaxed_header(*fields[name]))
        hasher.update(b"%s:%s" % relaxed_header(SIGNATURE_HEADER, unsigned, line_end=b""))
        return _header(unsigned, base64.b64encode(self._sign(hasher.digest())))

    def _sign(self, digest: bytes) -> bytes:
        if isinstance(self.key, rsa.RSAPrivateKey):
            return self.key.sign(digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        # RFC 8463: Ed25519 signs the SHA-256 of the headers (PureEdDSA over the hash).
        return self.key.sign(digest)


def load_key(path: Path) -> PrivateKey:
    """A PEM private key (RSA of at least 1024 bits, or Ed25519); ConfigError otherwise."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"DKIM_PRIVATE_KEY_PATH: cannot read {path}: {exc.strerror or exc}"
        ) from exc
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(
            f"DKIM_PRIVATE_KEY_PATH: {path} is not an unencrypted PEM private key ({exc})"
        ) from exc
    if isinstance(key, rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise ConfigError(
                f"DKIM_PRIVATE_KEY_PATH: {path} is a {key.key_size}-bit RSA key; receivers "
                f"refuse keys under {MIN_RSA_BITS} bits (2048 is usual)"
            )
        return key
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key
    raise ConfigError(
        f"DKIM_PRIVATE_KEY_PATH: {path} holds a {type(key).__name__}; DKIM signs with "
        "RSA or Ed25519"
    )


def signer_from_settings(settings: Settings) -> DkimSigner | None:
    """The signer every email gets, or None when DKIM is off (Settings.check saw to it
    that the three settings come together)."""
    if not settings.DKIM_PRIVATE_KEY_PATH:
        return None
    return DkimSigner(
        load_key(Path(settings.DKIM_PRIVATE_KEY_PATH)),
        selector=settings.DKIM_SELECTOR,
        domain=settings.DKIM_DOMAIN,
    )


def generate_key(kind: str = "rsa", bits: int = 2048) -> PrivateKey:
    """A new private key to sign with."""
    if kind == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if kind != "rsa":
        raise ValueError(f"a DKIM key is rsa or ed25519, not {kind!r}")
    if bits < MIN_RSA_BITS:
        raise ValueError(f"an RSA key for DKIM has at least {MIN_RSA_BITS} bits")
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def write_key(key: PrivateKey, path: Path) -> None:
    """Write `key` as PEM, readable by its owner only; never over an existing file."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # O_EXCL: an existing key may be the one in DNS; replacing it would fail every email.
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)


def dns_record(key: PrivateKey, selector: str, domain: str) -> tuple[str, list[str]]:
    """The DNS TXT record that publishes `key`'s public half: its name, and its value as
    the character-strings (at most 255 bytes each) DNS wants."""
    public = key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        kind = "rsa"
        data = public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    else:
        kind = "ed25519"  # RFC 8463: the bare 32-byte key
        data = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    value = f"v=DKIM1; k={kind}; p={base64.b64encode(data).decode('ascii')}"
    strings = [
        value[start : start + TXT_STRING_LENGTH]
        for start in range(0, len(value), TXT_STRING_LENGTH)
    ]
    return f"{selector}._domainkey.{domain}", strings
