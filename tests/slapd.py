"""A real OpenLDAP for the tests of the directory client and of LDAP sign-in.

``running_slapd`` starts Debian's ``slapd`` from a temporary folder on free loopback ports:
``ldaps://`` and ``ldap://`` with StartTLS, a certificate from a CA made here, ``security tls=1``
so nothing is ever read in the clear, and ACLs that let only the broker's service account
read. Users and groups are loaded with ``ldapadd``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ldap3

from tests.support import free_port
from tests.support import needs
from tests.support import wait_until

SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "root-password-1"
SERVICE_DN = f"cn=broker,ou=services,{SUFFIX}"
SERVICE_PASSWORD = "service-password-1"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
# name -> (password, groups). "agent" clashes with the suite's local account of that name.
DIRECTORY_USERS = {
    "alice": ("alice-password-1", ("helpdesk",)),
    "bob": ("bob-password-1", ()),
    "carol": ("carol-password-1", ("helpdesk",)),
    "dana": ("dana-password-1", ("helpdesk", "console-admins")),
    "agent": ("directory-agent-password-1", ("helpdesk",)),
}
GROUP_NAMES = ("helpdesk", "console-admins")
# Passwords no simple bind can carry (SASLprep refuses them): they are wrong passwords, not an outage.
UNSENDABLE = ["alice-password-1\x00", "alice-password-1\r", "\x1balice-password-1", "alice\x7fpassword-1", "a\x85b"]


def dn_of(name: str) -> str:
    return f"uid={name},{PEOPLE}"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(folder: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder)  # fmt: skip


def make_server_cert(folder: Path) -> None:
    """server.pem for 127.0.0.1 and localhost (not 127.0.0.2), signed by ca.pem."""
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost", cwd=folder)  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf", cwd=folder)  # fmt: skip


def slapd_conf(folder: Path) -> str:
    schemas = "\n".join(
        f"include /etc/ldap/schema/{name}.schema" for name in ("core", "cosine", "inetorgperson", "nis")
    )
    return f"""{schemas}
pidfile {folder}/slapd.pid
argsfile {folder}/slapd.args
modulepath /usr/lib/ldap
moduleload back_mdb
TLSCACertificateFile {folder}/ca.pem
TLSCertificateFile {folder}/server.pem
TLSCertificateKeyFile {folder}/server.key
security tls=1

database mdb
maxsize 10485760
suffix "{SUFFIX}"
rootdn "{ROOT_DN}"
rootpw {ROOT_PASSWORD}
directory {folder}/db
access to attrs=userPassword
  by anonymous auth
  by * none
access to *
  by dn.exact="{SERVICE_DN}" read
  by * none
"""


def ldif() -> str:
    parts = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n",
        *(
            f"dn: ou={ou},{SUFFIX}\nobjectClass: organizationalUnit\nou: {ou}\n"
            for ou in ("people", "groups", "services")
        ),
        f"dn: {SERVICE_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\ncn: broker\n"
        f"userPassword: {SERVICE_PASSWORD}\n",
    ]
    for name, (password, _) in DIRECTORY_USERS.items():
        parts.append(
            f"dn: {dn_of(name)}\nobjectClass: inetOrgPerson\nuid: {name}\ncn: {name.title()}\nsn: {name.title()}\n"
            f"userPassword: {password}\n"
        )
    for group in GROUP_NAMES:
        members = "".join(f"member: {dn_of(n)}\n" for n, (_, groups) in DIRECTORY_USERS.items() if group in groups)
        parts.append(f"dn: cn={group},{GROUPS}\nobjectClass: groupOfNames\ncn: {group}\n{members}")
    return "\n".join(parts)


@dataclass
class Slapd:
    folder: Path
    ldaps_port: int
    ldap_port: int

    @property
    def ca_file(self) -> str:
        return str(self.folder / "ca.pem")

    @property
    def other_ca_file(self) -> str:
        return str(self.folder / "other-ca.pem")

    def env(self) -> dict:
        return {
            "BROKER_AUTH": "local,ldap",
            "BROKER_LDAP_URL": f"ldaps://127.0.0.1:{self.ldaps_port}/",
            "BROKER_LDAP_CA_FILE": self.ca_file,
            "BROKER_LDAP_BIND_DN": SERVICE_DN,
            "BROKER_LDAP_BIND_PASSWORD": SERVICE_PASSWORD,
            "BROKER_LDAP_USER_BASE": PEOPLE,
            "BROKER_LDAP_GROUP_BASE": GROUPS,
            "BROKER_ADMIN_GROUPS": "console-admins",
        }

    def root(self) -> ldap3.Connection:
        tls = ldap3.Tls(validate=2, ca_certs_file=self.ca_file)
        server = ldap3.Server("127.0.0.1", port=self.ldaps_port, use_ssl=True, tls=tls, get_info=ldap3.NONE)
        return ldap3.Connection(server, ROOT_DN, ROOT_PASSWORD, auto_bind=True)


def listening(port: int, process: subprocess.Popen, log: Path) -> bool:
    """Whether slapd accepts connections on ``port``; raises with its log if it stopped."""
    if process.poll() is not None:
        raise RuntimeError(f"slapd stopped ({process.returncode}): {log.read_text()[-2000:]}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def running_slapd(folder: Path) -> Iterator[Slapd]:
    """OpenLDAP with the users and groups above, its files in ``folder``, until the generator is closed."""
    binary = shutil.which("slapd") or shutil.which("slapd", path="/usr/sbin:/usr/local/sbin")
    if not binary or not shutil.which("ldapadd") or not shutil.which("openssl"):
        needs("needs Debian's slapd, ldap-utils and openssl (apt-get install slapd ldap-utils openssl)")
    (folder / "db").mkdir()
    make_ca(folder, "ca")
    make_ca(folder, "other-ca")
    make_server_cert(folder)
    (folder / "slapd.conf").write_text(slapd_conf(folder))
    running = Slapd(folder, free_port(), free_port())
    urls = f"ldaps://127.0.0.1:{running.ldaps_port}/ ldaps://127.0.0.2:{running.ldaps_port}/ "
    urls += f"ldap://127.0.0.1:{running.ldap_port}/"
    log = folder / "slapd.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [binary, "-f", str(folder / "slapd.conf"), "-h", urls, "-d", "0"], stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(
            lambda: listening(running.ldaps_port, process, log),
            timeout=15,
            interval=0.05,
            message=lambda: f"slapd did not listen on {running.ldaps_port}: {log.read_text()[-2000:]}",
        )
        subprocess.run(
            ["ldapadd", "-x", "-H", f"ldaps://127.0.0.1:{running.ldaps_port}", "-D", ROOT_DN, "-w", ROOT_PASSWORD],
            input=ldif(),
            text=True,
            check=True,
            capture_output=True,
            env={**os.environ, "LDAPTLS_CACERT": running.ca_file, "LDAPTLS_REQCERT": "demand"},
        )
        yield running
    finally:
        process.terminate()
        process.wait(10)
