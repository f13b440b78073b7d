"""Sign-in with OpenID Connect (authorization code flow, PKCE, Authlib) and the provider's logouts.

Authlib does discovery, PKCE, ``state`` and ``nonce``, the code exchange and the ID token's
signature and claims. What it leaves to us: a state is single-use across every copy of
the cookie (Authlib only removes it from this one), a token response without an ID token
is refused, and the back-channel logout token (OpenID Connect Back-Channel Logout 1.0) is
checked here, with the provider's JWKS, as the spec asks.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time

import requests
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint
from flask import Flask
from flask import current_app
from flask import jsonify
from flask import redirect
from flask import request
from flask import session
from flask import url_for
from flask_login import current_user
from joserfc import jwt
from joserfc.errors import InvalidKeyIdError
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jws import JWSRegistry
from joserfc.jwt import JWTClaimsRegistry

from broker import state
from broker.config import OidcSettings
from broker.services import audit
from broker.services import identity
from broker.throttle import parse_limit
from broker.web import sessions
from broker.web import signin
from broker.web.presentation import no_store

log = logging.getLogger(__name__)

bp = Blueprint("oidc", __name__, url_prefix="/auth/oidc")

# Every call to the provider answers within this many seconds or counts as unreachable.
PROVIDER_TIMEOUT = 5
# Clock skew tolerated between the provider and us.
LEEWAY = 60
# A logout token is accepted this long after it was issued (plus LEEWAY) ...
LOGOUT_TOKEN_AGE = 120
# ... and its jti remembered, in the throttle's storage (Redis when configured, so every
# instance sees it), for longer than that: one slot per jti and window means a replay is refused.
SEEN_ONCE = parse_limit("1 per 10 minutes")
BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
# A logout token naming a key the cached key set (JWKS) lacks fetches the set again, as the
# provider may have rotated its keys, but at most once this many seconds: anyone can post
# tokens naming made-up keys, and each must not become a request to the provider.
KEY_SET_REFRESH = 60
# What an error code from the provider may look like before it goes into the audit.
ERROR_CODE = re.compile(r"^[a-z_]{1,40}$")


class SignInError(Exception):
    """An answer that signs nobody in: ``outcome`` and ``reason`` for the audit, ``message`` for the page."""

    def __init__(self, outcome: str, reason: str, message: str = "Single sign-on did not work. Try again."):
        super().__init__(reason)
        self.outcome = outcome
        self.reason = reason
        self.message = message


def clock() -> float:
    return time.monotonic()


class ProviderKeys:
    """The provider's key set as Authlib caches it, and when this app last fetched it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.fetched_at = -float("inf")

    def cached(self) -> KeySet:
        """The key set, fetched only the first time."""
        if not client().load_server_metadata().get("jwks"):
            self.fetched_at = clock()
        return KeySet.import_key_set(client().fetch_jwk_set())

    def refreshed(self) -> KeySet | None:
        """The key set fetched again; None when the last fetch is not KEY_SET_REFRESH old yet."""
        with self.lock:
            if clock() - self.fetched_at < KEY_SET_REFRESH:
                return None
            self.fetched_at = clock()
        return KeySet.import_key_set(client().fetch_jwk_set(force=True))


def register(app: Flask, settings: OidcSettings) -> None:
    """The provider's client (metadata fetched at the first sign-in, not at start-up) and the blueprint."""
    oauth = OAuth(app)
    oauth.register(
        "oidc",
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        server_metadata_url=settings.issuer + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": settings.scopes,
            "code_challenge_method": "S256",
            "token_endpoint_auth_method": "client_secret_basic",
            "default_timeout": PROVIDER_TIMEOUT,
        },
    )
    app.extensions["broker.oidc_keys"] = ProviderKeys()
    signin.register_provider_logout(app, end_session_redirect)
    app.register_blueprint(bp)


def client():
    """This app's Authlib client for the provider."""
    return current_app.extensions["authlib.integrations.flask_client"].oidc


def settings() -> OidcSettings:
    return state.settings().oidc


@bp.get("/login")
def login():
    wanted = signin.safe_next(request.args.get("next"))
    if current_user.is_authenticated:
        return redirect(wanted or url_for("views.index"))
    session["oidc_next"] = wanted
    try:
        return client().authorize_redirect(url_for("oidc.callback", _external=True))
    except (requests.RequestException, ValueError) as exc:
        return failed(SignInError("failed", f"provider unreachable: {type(exc).__name__}", unreachable_message()))


@bp.get("/callback")
def callback():
    wanted = signin.safe_next(session.pop("oidc_next", None))
    try:
        found, id_token = verified_identity()
    except SignInError as exc:
        return failed(exc)
    response = signin.external_sign_in(found, wanted or url_for("views.index"))
    if current_user.is_authenticated and current_user.external_id == found.subject:
        # Kept only for RP-initiated logout's id_token_hint.
        session["oidc_id_token"] = id_token
    return response


def failed(exc: SignInError):
    """Audit a sign-in that did not happen and say so on the login page (never a 500)."""
    if exc.outcome == "anonymous":
        # Anyone can send these without ever meeting the provider: stored once per address and minute.
        audit.stage_anonymous(state.throttle(), "sign_in", "refused", detail="oidc", reason=exc.reason)
    else:
        audit.stage("sign_in", exc.outcome, detail="oidc", reason=exc.reason)
    return signin.back_to_login(exc.message)


def unreachable_message() -> str:
    return f"{settings().name} cannot be reached. Try again in a moment."


def verified_identity() -> tuple[identity.ExternalIdentity, str]:
    """Who the provider says signed in, and the raw ID token; SignInError for anything else."""
    error = request.args.get("error")
    if error:
        code = error if ERROR_CODE.match(error) else "unrecognised error"
        raise SignInError("anonymous", f"provider answered {code}", f"{settings().name} did not sign you in.")
    use_state_once(request.args.get("state", ""))
    try:
        token = client().authorize_access_token(leeway=LEEWAY)
    except requests.RequestException as exc:
        raise SignInError("failed", f"provider unreachable: {type(exc).__name__}", unreachable_message()) from exc
    except AuthlibBaseError as exc:
        raise SignInError("refused", f"code exchange refused: {exc.error}") from exc
    except JoseError as exc:
        raise SignInError("refused", f"ID token rejected: {exc.error} {exc.description or ''}".strip()) from exc
    except ValueError as exc:
        raise SignInError("refused", f"ID token rejected: {type(exc).__name__}") from exc
    if not token.get("userinfo") or not token.get("id_token"):
        raise SignInError("refused", "the token response has no verified ID token")
    claims = with_userinfo(dict(token["userinfo"]), token)
    return identity_from(claims), token["id_token"]


def use_state_once(value: str) -> None:
    """Refuse a ``state`` this session does not hold, or one any copy of it has used before."""
    key = f"_state_oidc_{value}"
    if not value or key not in session:
        raise SignInError("anonymous", "unknown or already used state")
    digest = hashlib.sha256(value.encode()).hexdigest()
    if not state.throttle().take(SEEN_ONCE, f"oidc-state:{digest}").granted:
        session.pop(key, None)
        raise SignInError("refused", "state replayed")


def with_userinfo(claims: dict, token: dict) -> dict:
    """The ID token's claims, completed from the UserInfo endpoint when the name or groups are missing there.

    Providers differ: many release profile claims only from UserInfo for the code flow.
    """
    wanted = (settings().username_claim, settings().groups_claim)
    if all(name in claims for name in wanted) or not client().load_server_metadata().get("userinfo_endpoint"):
        return claims
    try:
        info = client().userinfo(token=token)
    except requests.RequestException as exc:
        raise SignInError("failed", f"provider unreachable: {type(exc).__name__}", unreachable_message()) from exc
    if info.get("sub") != claims.get("sub"):
        raise SignInError("refused", "UserInfo names another subject than the ID token")
    return {**info, **claims}


def identity_from(claims: dict) -> identity.ExternalIdentity:
    name = claims.get(settings().username_claim)
    groups = claims.get(settings().groups_claim)
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        groups = []
    return identity.ExternalIdentity(
        source="oidc",
        subject=f"{claims['iss']}|{claims['sub']}",
        username=name if isinstance(name, str) else "",
        groups=tuple(groups),
        sid=claims.get("sid") if isinstance(claims.get("sid"), str) else None,
    )


# -- logouts ---------------------------------------------------------------------


@bp.post("/backchannel-logout")
def backchannel_logout():
    """The provider says a session (``sid``) or a person (``sub``) signed out there: end theirs here."""
    try:
        claims = logout_claims(request.form.get("logout_token", ""))
    except SignInError as exc:
        reason = f"back-channel logout refused: {exc.reason}"
        audit.stage_anonymous(state.throttle(), "sign_out", "refused", detail="oidc", reason=reason)
        return no_store(jsonify(error="invalid_request"), 400)
    subject = f"{claims['iss']}|{claims['sub']}" if claims.get("sub") else None
    ended = sessions.end_external("oidc", subject, claims.get("sid"))
    who = ", ".join(ended) or "no live session"
    audit.stage(
        "sign_out",
        "ok",
        username=(ended[0] if len(ended) == 1 else "")[:64],
        detail="oidc",
        reason=f"back-channel logout from the provider ended {len(ended)} session(s): {who}",
    )
    return no_store(jsonify(status="ok"), 200)


def logout_claims(raw: str) -> dict:
    """The claims of a genuine, fresh, first-seen logout token for us, or SignInError."""
    if not raw or len(raw) > 8192:
        raise SignInError("refused", "no logout token")
    try:
        token = decode_signed(raw)
        claims = token.claims
        JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": client().load_server_metadata().get("issuer", settings().issuer)},
            aud={"essential": True, "value": settings().client_id},
            iat={"essential": True},
            jti={"essential": True},
        ).validate(claims)
    except requests.RequestException as exc:
        raise SignInError("failed", f"provider unreachable: {type(exc).__name__}") from exc
    except (JoseError, ValueError) as exc:
        what = f"{getattr(exc, 'error', type(exc).__name__)} {getattr(exc, 'description', '') or ''}"
        raise SignInError("refused", what.strip()) from exc
    check_logout_claims(claims)
    return claims


def decode_signed(raw: str):
    """The token, if signed by one of the provider's keys with an algorithm it announces (never ``none``)."""
    metadata = client().load_server_metadata()
    algorithms = [a for a in metadata.get("id_token_signing_alg_values_supported", ["RS256"]) if a != "none"]
    registry = JWSRegistry(algorithms=algorithms)
    keys: ProviderKeys = current_app.extensions["broker.oidc_keys"]
    try:
        return jwt.decode(raw, keys.cached(), registry=registry)
    except InvalidKeyIdError:
        # The provider may have rotated its keys since we fetched them (or someone names a made-up key).
        fresh = keys.refreshed()
        if fresh is None:
            raise
        return jwt.decode(raw, fresh, registry=registry)


def check_logout_claims(claims: dict) -> None:
    """The parts of Back-Channel Logout 1.0 section 2.6 that are not plain JWT checks."""
    iat = claims.get("iat")
    if not isinstance(iat, int | float) or iat < time.time() - LOGOUT_TOKEN_AGE - LEEWAY:
        raise SignInError("refused", "logout token is too old")
    events = claims.get("events")
    if not isinstance(events, dict) or BACKCHANNEL_EVENT not in events:
        raise SignInError("refused", "not a back-channel logout event")
    if "nonce" in claims:
        raise SignInError("refused", "logout token carries a nonce")
    if not isinstance(claims.get("sid"), str) and not isinstance(claims.get("sub"), str):
        raise SignInError("refused", "logout token names neither sid nor sub")
    digest = hashlib.sha256(str(claims.get("jti")).encode()).hexdigest()
    if not state.throttle().take(SEEN_ONCE, f"oidc-jti:{digest}").granted:
        raise SignInError("refused", "logout token replayed")


def end_session_redirect() -> str | None:
    """For a session signed in with OIDC: the provider's end-session URL, if it has one (read before sign-out)."""
    if sessions.method() != "oidc" or state.settings().oidc is None:
        return None
    id_token = session.get("oidc_id_token")
    try:
        metadata = client().load_server_metadata()
    except (requests.RequestException, ValueError) as exc:
        log.warning("OIDC provider unreachable for RP-initiated logout: %s", type(exc).__name__)
        return None
    if not metadata.get("end_session_endpoint"):
        return None
    url = client().create_logout_url(
        post_logout_redirect_uri=url_for("auth.login", _external=True),
        id_token_hint=id_token,
        client_id=settings().client_id,
    )["url"]
    return url
