"""What the Azure login running ``pulumi up`` is, read before the first resource is registered.

azure-native's ``getClientConfig`` names the caller (object id, subscription) but not what kind of
principal it is, and a role assignment must say that kind: Azure takes ``principalType`` as
``User`` when it is not given and refuses the assignment with ``UnmatchedPrincipalType`` when
the principal is a service principal or a managed identity (Azure RBAC REST API, Role
Assignments - Create, ``RoleAssignmentProperties.principalType``). The kind is in the caller's
own access token (``getClientToken``).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pulumi


def token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT access token. Read, not verified: the token is the caller's own,
    handed over by the provider, and only says who the caller is."""
    parts = token.split(".")
    if len(parts) != 3:
        raise pulumi.RunError("the Azure login's token (azure-native getClientToken) is not a JWT: log in again with `az login`")
    body = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(body))
    except (binascii.Error, ValueError):
        raise pulumi.RunError("the Azure login's token (azure-native getClientToken) has unreadable claims: log in again with `az login`") from None
    if not isinstance(claims, dict):
        raise pulumi.RunError("the Azure login's token (azure-native getClientToken) has no claims object")
    return claims


def principal_type(claims: dict[str, Any]) -> str:
    """``User`` or ``ServicePrincipal``, from the Microsoft identity platform's access token
    claims (Microsoft Learn, "Access token claims reference"): ``idtyp`` is ``user`` or ``app``
    where present; otherwise ``scp`` is "only included for user tokens", and an app-only token
    (a service principal, or a managed identity, which is one) has none."""
    idtyp = str(claims.get("idtyp", "")).lower()
    if idtyp in ("user", "app"):
        return "User" if idtyp == "user" else "ServicePrincipal"
    return "User" if claims.get("scp") else "ServicePrincipal"


def caller_principal_type() -> str:
    """The kind of principal ``pulumi up`` runs as; an invoke, so it happens at preview too."""
    from pulumi_azure_native import authorization

    return principal_type(token_claims(authorization.get_client_token().token))
