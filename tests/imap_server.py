"""A real Dovecot (IMAP and POP3) for the tests: a throwaway configuration on free loopback
ports, TLS with a certificate from a trustme CA, users in a passwd file, maildirs in a
temporary folder.

`DovecotServer` runs `dovecot -F` as a child process and stops it on exit. Users are added
while it runs (a passwd file each, read at login), so one server serves many
tests, each with a mailbox of its own. As root (the CI user) the mail is owned by `nobody`,
since Dovecot refuses to open mail as root; as anyone else it runs as that user.
"""

from __future__ import annotations

import imaplib
import os
import pwd
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from pathlib import Path

import trustme

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"


def dovecot_available() -> str | None:
    """Why Dovecot cannot run here, or None."""
    if not Path(DOVECOT).is_file():
        return f"{DOVECOT} not found (apt-get install dovecot-imapd dovecot-pop3d)"
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
instance_name = test-{tag}
log_path = {root}/dovecot.log
protocols = imap pop3
listen = 127.0.0.1
ssl = yes
ssl_cert = <{root}/cert.pem
ssl_key = <{root}/key.pem
ssl_min_protocol = TLSv1.2
# A password only over TLS: imap on the plain port must STARTTLS first.
disable_plaintext_auth = yes
# A wrong password is answered at once (the tests try one on purpose).
auth_failure_delay = 0
auth_mechanisms = plain
default_login_user = {login_user}
default_internal_user = {internal_user}
first_valid_uid = 1
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/users/%u
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/home/%u
}}
service imap-login {{
  inet_listener imap {{
    port = {imap}
  }}
  inet_listener imaps {{
    port = {imaps}
    ssl = yes
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = 0
  }}
  inet_listener pop3s {{
    port = {pop3s}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
service imap-login {{
  chroot =
}}
service pop3-login {{
  chroot =
}}
"""


class DovecotServer:
    """Dovecot on loopback; `with DovecotServer() as server:` starts and stops it."""

    def __init__(self) -> None:
        self.ca = trustme.CA()
        self.process: subprocess.Popen | None = None
        # Not under pytest's tmp_path: as root, the mail user must be able to reach it.
        self.root = Path(tempfile.mkdtemp(prefix="dovecot-"))
        self.imap_port = self.imaps_port = self.pop3s_port = 0

    def _accounts(self) -> tuple[str, str, int, int]:
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            return "dovenull", "dovecot", nobody.pw_uid, nobody.pw_gid
        me = pwd.getpwuid(os.geteuid())
        return me.pw_name, me.pw_name, me.pw_uid, me.pw_gid

    def start(self) -> DovecotServer:
        login_user, internal_user, uid, gid = self._accounts()
        self.root.chmod(0o755)
        (self.root / "home").mkdir(mode=0o755)
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        cert.private_key_pem.write_to_path(str(self.root / "key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.root / "cert.pem"))
        # A file per user: Dovecot re-reads a changed passwd file only when its mtime's
        # second changes, and tests add users faster than that.
        (self.root / "users").mkdir()
        if os.geteuid() == 0:
            os.chown(self.root / "home", uid, gid)
        for attempt in range(3):
            self.imap_port, self.imaps_port, self.pop3s_port = (
                _free_port(),
                _free_port(),
                _free_port(),
            )
            config = self.root / "dovecot.conf"
            config.write_text(
                CONFIG.format(
                    root=self.root,
                    tag=secrets.token_hex(4),
                    login_user=login_user,
                    internal_user=internal_user,
                    uid=uid,
                    gid=gid,
                    imap=self.imap_port,
                    imaps=self.imaps_port,
                    pop3s=self.pop3s_port,
                )
            )
            self.process = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            if self._wait_until_listening():
                return self
            self.stop()
            if attempt == 2:
                raise RuntimeError(f"Dovecot did not start:\n{self.log()}")
        return self  # pragma: no cover

    def _wait_until_listening(self, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        ports = [self.imap_port, self.imaps_port, self.pop3s_port]
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False  # a port taken in the meantime, most likely
            try:
                for port in ports:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                return True
            except OSError:
                time.sleep(0.02)
        return False

    def log(self) -> str:
        parts = []
        if self.process is not None and self.process.stderr and self.process.poll() is not None:
            parts.append(self.process.stderr.read().decode(errors="replace"))
        log = self.root / "dovecot.log"
        if log.exists():
            parts.append(log.read_text(errors="replace"))
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr:
            self.process.stderr.close()
        self.process = None

    def __enter__(self) -> DovecotServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    # --- for the tests ---------------------------------------------------------------

    def add_user(self, name: str | None = None, password: str | None = None) -> tuple[str, str]:
        """A new account with an empty mailbox; returns (name, password)."""
        name = name or f"bounces{secrets.token_hex(4)}"
        password = password or secrets.token_urlsafe(12)
        (self.root / "users" / name).write_text(f"{name}:{{PLAIN}}{password}::::::\n")
        return name, password

    def ssl_context(self) -> ssl.SSLContext:
        """A client context that trusts the server's certificate (and nothing else)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context

    def cafile(self) -> Path:
        path = self.root / "ca.pem"
        if not path.exists():
            self.ca.cert_pem.write_to_path(str(path))
        return path

    def imap(self, user: str, password: str) -> imaplib.IMAP4_SSL:
        """A logged-in IMAP client over TLS, for the tests' own look at the mailbox."""
        client = imaplib.IMAP4_SSL(
            "127.0.0.1", self.imaps_port, ssl_context=self.ssl_context(), timeout=10
        )
        client.login(user, password)
        return client

    def append(self, user: str, password: str, messages: list[bytes], folder: str = "INBOX"):
        """Put messages into a folder, as a mail server delivering them would."""
        client = self.imap(user, password)
        try:
            for raw in messages:
                typ, data = client.append(folder, None, None, raw)
                assert typ == "OK", data
        finally:
            client.logout()

    def folder(self, user: str, password: str, folder: str = "INBOX") -> list[bytes]:
        """The messages in a folder (read without marking them seen); [] if it is missing."""
        client = self.imap(user, password)
        try:
            typ, _ = client.select(f'"{folder}"', readonly=True)
            if typ != "OK":
                return []
            _, data = client.uid("SEARCH", "UNDELETED")
            uids = data[0].split()
            messages = []
            for uid in uids:
                _, fetched = client.uid("FETCH", uid, "(BODY.PEEK[])")
                messages.append(fetched[0][1])
            return messages
        finally:
            client.logout()

    def url(self, scheme: str, user: str, password: str, folder: str = "INBOX") -> str:
        from urllib.parse import quote

        port = {"imaps": self.imaps_port, "imap": self.imap_port, "pop3s": self.pop3s_port}
        path = "" if scheme == "pop3s" else f"/{quote(folder)}"
        return (
            f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@127.0.0.1:{port[scheme]}{path}"
        )
