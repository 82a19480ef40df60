"""Agent JWTs: minting and reading them with djangorestframework-simplejwt.

Claims: `sub` (agent id), `scopes` (granted at issue), `jti`, `token_type`, `cid` (the key id
of the credential that was exchanged, so revoking it ends its tokens too) and, on access
tokens, `rid` (the jti of the refresh token they came from, so revoking that revokes them)
and, on both, `fam`: the refresh-token family, the jti of the first refresh token of a token
exchange, kept through every rotation, so a reused refresh token can end all its heirs.
The database, not the token, has the last word on scopes, activity and revocation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from rest_framework_simplejwt.exceptions import TokenError
from rest_framework_simplejwt.settings import api_settings
from rest_framework_simplejwt.tokens import AccessToken, RefreshToken, Token, UntypedToken

from agents.models import Agent, Credential

ACCESS = "access"
REFRESH = "refresh"


class InvalidToken(Exception):
    """The string is not a valid, unexpired Ordinaut JWT of the expected type."""


@dataclass(frozen=True)
class TokenClaims:
    agent_id: uuid.UUID
    scopes: tuple[str, ...]
    jti: str
    token_type: str
    credential_key_id: str
    refresh_jti: str | None
    expires_at: datetime
    family: str | None = None

    @property
    def revocation_ids(self) -> list[str]:
        """The RevokedToken ids any of which refuses this token."""
        ids = [self.jti]
        if self.refresh_jti:
            ids.append(self.refresh_jti)
        if self.family:
            ids.append(family_id(self.family))
        return ids


def family_id(family: str) -> str:
    """The RevokedToken id that ends a whole refresh-token family."""
    return f"family:{family}"


@dataclass(frozen=True)
class TokenPair:
    access: str
    refresh: str
    refresh_jti: str
    expires_in: int


def mint_pair(agent: Agent, credential: Credential, *, family: str | None = None) -> TokenPair:
    """A new refresh token and an access token bound to it, in `family` (None: a new one,
    named after this refresh token)."""
    refresh = RefreshToken()
    _fill(refresh, agent, credential)
    family = family or refresh[api_settings.JTI_CLAIM]
    refresh["fam"] = family
    access = AccessToken()
    _fill(access, agent, credential)
    access["rid"] = refresh[api_settings.JTI_CLAIM]
    access["fam"] = family
    return TokenPair(
        access=str(access),
        refresh=str(refresh),
        refresh_jti=refresh[api_settings.JTI_CLAIM],
        expires_in=int(AccessToken.lifetime.total_seconds()),
    )


def _fill(token: Token, agent: Agent, credential: Credential) -> None:
    token["sub"] = str(agent.id)
    token["scopes"] = list(agent.scopes)
    token["cid"] = credential.key_id


def read(raw: str, token_type: str | None) -> TokenClaims:
    """Verify signature, expiry and type (None: either) and return the claims.

    Raises InvalidToken with a reason that is safe to show.
    """
    token_class = {ACCESS: AccessToken, REFRESH: RefreshToken, None: UntypedToken}[token_type]
    try:
        token = token_class(raw)
    except TokenError as exc:
        raise InvalidToken(str(exc)) from exc
    payload = token.payload
    try:
        kind = payload[api_settings.TOKEN_TYPE_CLAIM]
        if kind not in (ACCESS, REFRESH):
            raise InvalidToken("unknown token type")
        scopes = payload.get("scopes", [])
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise InvalidToken("malformed scopes claim")
        return TokenClaims(
            agent_id=uuid.UUID(str(payload["sub"])),
            scopes=tuple(scopes),
            jti=str(payload[api_settings.JTI_CLAIM]),
            token_type=kind,
            credential_key_id=str(payload["cid"]),
            refresh_jti=payload.get("rid"),
            expires_at=datetime.fromtimestamp(int(payload["exp"]), UTC),
            family=payload.get("fam"),
        )
    except (KeyError, ValueError, TypeError) as exc:
        raise InvalidToken("token is missing required claims") from exc


def looks_like_jwt(raw: str) -> bool:
    """Cheap shape test (three dot-separated parts) to pick the verification path."""
    return raw.count(".") == 2
