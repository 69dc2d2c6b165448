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


# Azure Resource Manager's endpoint (public cloud) and the Providers - Get API version
ARM_ENDPOINT = "https://management.azure.com"
PROVIDERS_API = "2021-04-01"


def provider_states(subscription_id: str, token: str, namespaces: list[str], timeout_s: float = 30) -> dict[str, str]:
    """``registrationState`` per namespace (Resource Providers - Get, ARM REST API), or an empty
    dict when ARM cannot be asked (no network, a role without read on the subscription): the
    check is then left to Azure, and the warning says what to run if it refuses."""
    import urllib.error
    import urllib.request

    states: dict[str, str] = {}
    for ns in namespaces:
        url = f"{ARM_ENDPOINT}/subscriptions/{subscription_id}/providers/{ns}?api-version={PROVIDERS_API}"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:  # noqa: S310 - the ARM endpoint
                states[ns] = str(json.loads(resp.read()).get("registrationState", ""))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            pulumi.log.warn(f"could not read the registration of {', '.join(namespaces)} ({exc}); if Azure answers "
                            f"MissingSubscriptionRegistration: {register_commands(namespaces)}")
            return {}
    return states


def register_commands(namespaces: list[str]) -> str:
    return " && ".join(f"az provider register --namespace {ns} --wait" for ns in namespaces)


def require_providers(namespaces: list[str]) -> None:
    """Stops the program, before any resource, when a namespace it needs is not registered.

    azure-native sends plain ARM requests and registers nothing (pulumi/pulumi-azure-native
    #3479); Azure registers a namespace itself only for portal actions and templates, and a new
    subscription has few registered by default (Microsoft Learn, "Resource providers and
    types"): Microsoft.DevTestLab (auto-shutdown) is not, and Compute, Network and Storage may
    not be. Without this, ``pulumi up`` fails with MissingSubscriptionRegistration part-way,
    after the VMs exist."""
    from pulumi_azure_native import authorization

    client = authorization.get_client_config()
    token = authorization.get_client_token().token
    states = provider_states(client.subscription_id, token, namespaces)
    missing = [ns for ns, state in states.items() if state != "Registered"]
    if missing:
        shown = ", ".join(f"{ns} ({states[ns] or 'no state'})" for ns in missing)
        raise pulumi.RunError(f"the subscription is not registered for {shown}; register once (minutes), then run again: "
                              f"{register_commands(missing)}")
