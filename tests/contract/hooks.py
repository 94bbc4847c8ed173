"""schemathesis hooks for the contract run (loaded through SCHEMATHESIS_HOOKS by
contract.py, which sets the variables read here)."""

import itertools
import json
import os
import subprocess

import schemathesis

# The bulk import takes a JSON-lines file; the document describes it as a string,
# which goes on the wire as text.
schemathesis.serializer.alias("application/x-ndjson", "text/plain")

_created = itertools.count(1)


# The fuzzer finds every key id in the listings and will disable, rotate, edit or
# remove the admin key it is using; the admin operations would then answer only
# 401 for the rest of the run. So the admin key comes from here: a fresh one, made
# over the admin socket, whenever an admin operation answers 401 or 403
# (schemathesis then replays that request once with the new key).
@schemathesis.auth(refresh_interval=24 * 3600, retry_on=[401, 403]).apply_to(
    path_regex="^/v1/admin/"
)
class AdminKey:
    def get(self, case, ctx):
        out = subprocess.run(
            [
                os.environ["APIKEYD_CONTRACT_CTL"],
                "--socket",
                os.environ["APIKEYD_CONTRACT_SOCKET"],
                "key", "create", "--user", "admin",
                "--name", f"contract-admin-{os.getpid()}-{next(_created)}",
                "--scopes", "apikeyd:admin", "--no-notify", "--json",
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout)["key"]

    def set(self, case, data, ctx):
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}
