"""A stand-in for the Azure CLI where no Azure login exists: it records every command line
(``$FAKE_AZ_LOG``, one JSON list per line) and answers ``az account get-access-token`` for
Azure Storage (``--resource`` with or without the trailing slash, as the CLI takes it) with the
operator's token, which the Blob service of tests/azurite.py lets read, not write; as JSON
(``--output json``, what azure-identity's ``AzureCliCredential`` asks for: ``accessToken``,
``expiresOn``, ``expires_on``) or as ``--query accessToken -o tsv``. With ``$FAKE_AZ_LOGGED_OUT`` set it fails as the CLI does without a login.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    from tests.azurite import TENANT, USER_TOKEN

    with open(os.environ["FAKE_AZ_LOG"], "a") as fh:
        fh.write(json.dumps(argv) + "\n")
    if argv[:2] != ["account", "get-access-token"]:
        print(f"ERROR: '{' '.join(argv[:2])}' is misspelled or not recognized by the system.", file=sys.stderr)
        return 2
    if os.environ.get("FAKE_AZ_LOGGED_OUT"):
        print("ERROR: Please run 'az login' to setup account.", file=sys.stderr)
        return 1
    opts = dict(zip(argv[2::2], argv[3::2], strict=False))
    if (opts.get("--resource") or "").rstrip("/") != "https://storage.azure.com":
        print(f"ERROR: the fake answers only for Azure Storage, not {opts.get('--resource')!r}", file=sys.stderr)
        return 1
    token = {"accessToken": USER_TOKEN, "expiresOn": "2099-01-01 00:00:00.000000", "expires_on": 4070908800,
             "subscription": "00000000-0000-0000-0000-000000000000", "tenant": TENANT, "tokenType": "Bearer"}
    if opts.get("--query") == "accessToken" and opts.get("-o") == "tsv":
        print(USER_TOKEN)
    else:
        print(json.dumps(token, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
