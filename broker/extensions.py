"""Extension objects, created unbound and attached to the app in the factory."""

from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf.csrf import CSRFProtect
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.orm import Session


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
login_manager = LoginManager()
migrate = Migrate()
csrf = CSRFProtect()
# Limits are declared on the routes that need them (sign-in); nothing by default.
limiter = Limiter(key_func=get_remote_address, default_limits=[])


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection, connection_record) -> None:
    """SQLite: enforce ON DELETE CASCADE (removing a user drops their rules), and use WAL.

    WAL lets readers and the audit writer of several workers proceed together, and
    synchronous=NORMAL keeps each audit commit to a write without an fsync wait.
    """
    if not type(dbapi_connection).__module__.startswith("sqlite3"):
        return
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


# -- the unit of work's connection ----------------------------------------------------------------------

WRITES = "broker.writes"


@event.listens_for(Session, "do_orm_execute")
def _note_writes(state: ORMExecuteState) -> None:
    if state.is_insert or state.is_update or state.is_delete:
        state.session.info[WRITES] = True


@event.listens_for(Session, "after_flush")
def _note_flush(session: Session, flush_context) -> None:
    session.info[WRITES] = True


@event.listens_for(Session, "after_commit")
@event.listens_for(Session, "after_rollback")
def _forget_writes(session: Session) -> None:
    session.info.pop(WRITES, None)


def hand_back_connection() -> None:
    """Give the pooled connection back before a wait of seconds (on a cloud), so that the wait holds none.

    Only when the unit of work holds no write yet to be committed: closing the session would drop it,
    and the boundary that commits it (the request's, a command's, a relay call's) gives the connection back.
    """
    session = db.session()
    if not (session.info.get(WRITES) or session.new or session.dirty or session.deleted):
        session.close()
