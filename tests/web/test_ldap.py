"""Sign-in against a real OpenLDAP: search-then-bind, groups, filter injection, TLS checks, a directory that is down.

The suite starts its own slapd (Debian's ``slapd``) once, from a temporary folder, on free
loopback ports: ``ldaps://`` and ``ldap://`` with StartTLS, a certificate from a CA made
here, ``security tls=1`` so nothing is ever read in the clear, and ACLs that let only the
broker's service account read. Users and groups are loaded with ``ldapadd``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import ldap3
import pytest
from sqlalchemy import select

from broker.config import ConfigError
from broker.config import LdapSettings
from broker.config import load_settings
from broker.directory import Directory
from broker.directory import DirectoryUnreachable
from broker.extensions import db
from broker.models import AuditRecord
from broker.models import Group
from broker.models import User
from broker.services import users
from tests.support import ADMIN
from tests.support import AuthActions
from tests.support import needs

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


def dn_of(name: str) -> str:
    return f"uid={name},{PEOPLE}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


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


def wait_for_port(port: int, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"slapd stopped ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"slapd did not listen on {port}: {log.read_text()[-2000:]}")


@pytest.fixture(scope="session")
def slapd(tmp_path_factory):
    """OpenLDAP with the users and groups above, for the whole session."""
    binary = shutil.which("slapd") or shutil.which("slapd", path="/usr/sbin:/usr/local/sbin")
    if not binary or not shutil.which("ldapadd") or not shutil.which("openssl"):
        needs("needs Debian's slapd, ldap-utils and openssl (apt-get install slapd ldap-utils openssl)")
    folder = tmp_path_factory.mktemp("slapd")
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
        wait_for_port(running.ldaps_port, process, log)
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


@pytest.fixture
def ldap_changes() -> dict:
    """Changes to the working LDAP settings; a test parametrizes it ("{name}" fields come from the Slapd)."""
    return {}


@pytest.fixture
def env_overrides(slapd, ldap_changes) -> dict:
    fields = {**vars(slapd), "other_ca_file": slapd.other_ca_file, "closed": free_port()}
    changes = {key: value.format(**fields) for key, value in ldap_changes.items()}
    return {**slapd.env(), **changes}


def records(app, outcome: str | None = None) -> list[AuditRecord]:
    with app.app_context():
        query = select(AuditRecord).where(AuditRecord.action == "sign_in").order_by(AuditRecord.id)
        found = list(db.session.scalars(query))
    return [entry for entry in found if outcome is None or entry.outcome == outcome]


def user_row(app, name: str) -> tuple[str, str, str | None, list[str]] | None:
    """(source, role, external ID, groups) of the account ``name``, or None."""
    with app.app_context():
        user = users.find(name)
        if user is None:
            return None
        groups = db.session.scalars(select(Group).where(Group.members.contains(user)).order_by(Group.name))
        return user.source, user.role, user.external_id, [group.name for group in groups]


def external_count(app) -> int:
    with app.app_context():
        return len(list(db.session.scalars(select(User).where(User.source != "local"))))


@pytest.fixture
def broker_groups(app):
    """The broker's own groups of the directory's names (external groups map to broker groups of the same name)."""
    with app.app_context():
        for name in GROUP_NAMES:
            db.session.add(Group(name=name))
        db.session.commit()


def page(response) -> str:
    return response.get_data(as_text=True)


# -- signing in ------------------------------------------------------------------------


def test_directory_user_signs_in_with_groups(app, client, auth, broker_groups):
    response = auth.login("alice", DIRECTORY_USERS["alice"][0], next="/")
    assert response.status_code == 302 and response.headers["Location"] == "/"
    assert client.get("/").status_code == 200
    assert user_row(app, "alice") == ("ldap", "agent", dn_of("alice"), ["helpdesk"])
    [entry] = records(app)
    assert (entry.outcome, entry.username, entry.detail) == ("ok", "alice", "ldap")
    assert "joined group helpdesk" in entry.reason


def test_admin_group_makes_an_admin(app, auth, broker_groups):
    assert auth.login("dana", DIRECTORY_USERS["dana"][0]).status_code == 302
    assert user_row(app, "dana") == ("ldap", "admin", dn_of("dana"), ["console-admins", "helpdesk"])


def test_the_name_is_the_directorys_spelling(app, auth):
    # uid matching is case-insensitive in LDAP; the account keeps the directory's spelling.
    assert auth.login("ALICE", DIRECTORY_USERS["alice"][0]).status_code == 302
    assert user_row(app, "alice")[0] == "ldap"
    assert [entry.username for entry in records(app, "ok")] == ["alice"]


def test_leaving_a_group_in_the_directory_leaves_it_here_at_next_sign_in(app, client, auth, slapd, broker_groups):
    password = DIRECTORY_USERS["carol"][0]
    assert auth.login("carol", password).status_code == 302
    assert user_row(app, "carol")[3] == ["helpdesk"]
    auth.logout()
    with slapd.root() as root:
        root.modify(f"cn=helpdesk,{GROUPS}", {"member": [(ldap3.MODIFY_DELETE, [dn_of("carol")])]})
    try:
        assert auth.login("carol", password).status_code == 302
        assert user_row(app, "carol")[3] == []
        assert "left group helpdesk" in records(app, "ok")[-1].reason
    finally:
        with slapd.root() as root:
            root.modify(f"cn=helpdesk,{GROUPS}", {"member": [(ldap3.MODIFY_ADD, [dn_of("carol")])]})


@pytest.mark.parametrize(
    "ldap_changes", [{"BROKER_LDAP_URL": "ldap://127.0.0.1:{ldap_port}/", "BROKER_LDAP_START_TLS": "true"}]
)
def test_start_tls_signs_in(app, auth):
    assert auth.login("bob", DIRECTORY_USERS["bob"][0]).status_code == 302
    assert user_row(app, "bob") == ("ldap", "agent", dn_of("bob"), [])


@pytest.mark.parametrize("ldap_changes", [{"BROKER_AUTH": "ldap,local"}])
def test_local_break_glass_account_signs_in_after_the_directory(app, auth):
    assert auth.login(*ADMIN).status_code == 302
    [entry] = records(app, "ok")
    assert (entry.username, entry.detail) == ("admin", "local")


def test_strangers_cannot_lock_out_a_directory_users_own_browser(app, auth):
    password = DIRECTORY_USERS["bob"][0]
    assert auth.login("bob", password).status_code == 302  # bob's own browser, which gets a device cookie
    auth.logout()
    stranger = AuthActions(app.test_client())
    assert [stranger.login("bob", f"guess-{n}").status_code for n in range(6)] == [401] * 5 + [429]
    assert stranger.login("bob", password).status_code == 429  # the account is throttled for everyone else
    assert auth.login("bob", password).status_code == 302  # but not for its owner's browser


def test_a_directory_users_own_browser_has_its_own_limit(app, auth):
    password = DIRECTORY_USERS["bob"][0]
    assert auth.login("bob", password).status_code == 302
    auth.logout()
    assert [auth.login("bob", f"guess-{n}").status_code for n in range(6)] == [401] * 5 + [429]


# -- refused -------------------------------------------------------------------------


def test_wrong_password_is_refused_and_audited(app, auth):
    response = auth.login("alice", "not-alice-password")
    assert response.status_code == 401
    assert "Wrong user name or password." in page(response)
    [entry] = records(app)
    assert entry.outcome == "failed" and "not-alice-password" not in str(entry.to_json())
    assert user_row(app, "alice") is None


# Passwords no simple bind can carry (SASLprep refuses them): they are wrong passwords, not an outage.
UNSENDABLE = ["alice-password-1\x00", "alice-password-1\r", "\x1balice-password-1", "alice\x7fpassword-1", "a\x85b"]


@pytest.mark.parametrize("password", UNSENDABLE)
def test_a_password_with_a_control_character_is_a_wrong_password(app, auth, caplog, password):
    answers = [auth.login("alice", password) for _ in range(6)]
    assert [answer.status_code for answer in answers] == [401] * 5 + [429]  # counted like any wrong guess
    assert "Wrong user name or password." in page(answers[0])
    audited = [(entry.outcome, entry.reason) for entry in records(app)]
    assert audited[:5] == [("failed", "wrong user name or password")] * 5
    assert not [r for r in caplog.records if "unreachable" in r.getMessage()]  # no false outage in the log
    assert user_row(app, "alice") is None


@pytest.mark.parametrize("name", ["nobody", "*)(uid=*", "*", "alice)(|(uid=*", "*)(objectClass=*", "al*"])
def test_unknown_names_and_filter_injection_are_refused(app, auth, name):
    # Escaped into the filter, "*)(uid=*" is a name nobody has, not a filter matching everyone.
    response = auth.login(name, DIRECTORY_USERS["alice"][0])
    assert response.status_code == 401
    assert "Wrong user name or password." in page(response)
    assert external_count(app) == 0
    [entry] = records(app)
    assert entry.outcome == "failed" and entry.username.startswith("?")  # a keyed hash, not the typed name


def test_a_directory_name_held_by_a_local_account_is_refused(app, client, auth):
    response = auth.login("agent", DIRECTORY_USERS["agent"][0])
    assert response.status_code == 302 and "/login" in response.headers["Location"]
    assert "An account with your user name already exists here" in page(client.get(response.headers["Location"]))
    assert user_row(app, "agent") == ("local", "agent", None, [])
    [entry] = records(app)
    assert (entry.outcome, entry.detail) == ("refused", "ldap")
    assert client.get("/", headers={"Accept": "text/html"}).status_code == 302  # not signed in
    assert client.get_cookie("broker_device") is None  # nor does this browser get a sign-in budget of its own


def test_empty_password_never_reaches_the_form_check(app, client, auth):
    response = auth.login("alice", "")
    assert response.status_code == 401
    assert external_count(app) == 0


# -- the directory cannot answer ---------------------------------------------------------


DOWN = [
    pytest.param({"BROKER_LDAP_URL": "ldaps://127.0.0.1:{closed}/"}, "Connection refused", id="closed-port"),
    pytest.param({"BROKER_LDAP_CA_FILE": "{other_ca_file}"}, "CERTIFICATE_VERIFY_FAILED", id="cert-of-another-ca"),
    pytest.param(
        {"BROKER_LDAP_URL": "ldaps://127.0.0.2:{ldaps_port}/"},
        "ssl wrapping error: certificate",
        id="cert-for-another-name",
    ),
    pytest.param(
        {
            "BROKER_LDAP_URL": "ldap://127.0.0.1:{ldap_port}/",
            "BROKER_LDAP_START_TLS": "true",
            "BROKER_LDAP_CA_FILE": "{other_ca_file}",
        },
        "CERTIFICATE_VERIFY_FAILED",
        id="start-tls-another-ca",
    ),  # fmt: skip
    pytest.param({"BROKER_LDAP_BIND_PASSWORD": "wrong"}, "service account", id="service-account-refused"),
]


@pytest.mark.parametrize(("ldap_changes", "why"), DOWN)
def test_unreachable_directory_says_so_and_local_accounts_still_sign_in(app, client, auth, why):
    response = auth.login("alice", DIRECTORY_USERS["alice"][0])
    assert response.status_code == 503
    assert "The directory is unreachable; local accounts can still sign in." in page(response)
    assert external_count(app) == 0
    [entry] = records(app)
    assert (entry.outcome, entry.detail) == ("failed", "ldap")
    assert entry.reason.startswith("directory unreachable: ldap") and why in entry.reason
    assert SERVICE_PASSWORD not in entry.reason and "alice-password" not in entry.reason
    assert auth.login(*ADMIN).status_code == 302
    assert records(app, "ok")[-1].username == "admin"


@pytest.mark.parametrize("ldap_changes", [{"BROKER_AUTH": "ldap", "BROKER_LDAP_URL": "ldaps://127.0.0.1:{closed}/"}])
def test_unreachable_directory_without_local_accounts(auth):
    response = auth.login("alice", DIRECTORY_USERS["alice"][0])
    assert response.status_code == 503
    assert "The directory is unreachable. Try again in a few minutes." in page(response)


# -- the client on its own ------------------------------------------------------------------


@pytest.fixture
def directory(slapd) -> Directory:
    env = slapd.env()
    return Directory(
        LdapSettings(
            url=env["BROKER_LDAP_URL"],
            bind_dn=SERVICE_DN,
            bind_password=SERVICE_PASSWORD,
            user_base=PEOPLE,
            group_base=GROUPS,
            ca_file=slapd.ca_file,
        )
    )


def test_client_finds_user_and_groups(directory):
    found = directory.authenticate("dana", DIRECTORY_USERS["dana"][0])
    assert (found.dn, found.username, found.groups) == (dn_of("dana"), "dana", ("console-admins", "helpdesk"))


@pytest.mark.parametrize("name", ["", "a" * 65, "alice\x00", "alice\n", "*)(uid=*", "*"])
def test_client_refuses_bad_names(directory, name):
    assert directory.authenticate(name, DIRECTORY_USERS["alice"][0]) is None


@pytest.mark.parametrize("name", ["alice", "a" * 65, "bob\x00", "bob\x7f"])
def test_empty_password_and_bad_names_never_reach_the_directory(name):
    # Pointed at a closed port: any LDAP call would raise DirectoryUnreachable.
    closed = Directory(
        LdapSettings(url=f"ldaps://127.0.0.1:{free_port()}", bind_dn="", bind_password="", user_base=PEOPLE)
    )
    password = "" if name == "alice" else "some-password"
    assert closed.authenticate(name, password) is None


@pytest.mark.parametrize("password", UNSENDABLE)
def test_client_answers_an_unsendable_password_as_wrong(directory, password):
    assert directory.authenticate("alice", password) is None


def test_unreachable_error_names_the_url_not_the_password():
    url = f"ldaps://127.0.0.1:{free_port()}"
    closed = Directory(LdapSettings(url=url, bind_dn=SERVICE_DN, bind_password=SERVICE_PASSWORD, user_base=PEOPLE))
    with pytest.raises(DirectoryUnreachable) as caught:
        closed.authenticate("alice", "alice-password-1")
    assert url in str(caught.value)
    assert SERVICE_PASSWORD not in str(caught.value) and "alice-password-1" not in str(caught.value)


def test_verify_false_is_logged_loudly(caplog):
    Directory(LdapSettings(url="ldaps://ldap.example", bind_dn="", bind_password="", verify=False))
    assert any("NOT checked" in record.getMessage() and record.levelname == "WARNING" for record in caplog.records)


def test_plain_ldap_without_start_tls_stops_start_up(tmp_path, slapd):
    env = {**slapd.env(), "BROKER_SECRET_KEY": "k" * 32, "BROKER_DEMO": "false"}
    env["BROKER_LDAP_URL"] = f"ldap://127.0.0.1:{slapd.ldap_port}/"
    with pytest.raises(ConfigError, match="BROKER_LDAP_START_TLS"):
        load_settings(env, str(tmp_path))
