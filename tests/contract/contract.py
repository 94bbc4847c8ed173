"""The HTTP contract, fuzzed: schemathesis against a real apikeyd.

Starts apikeyd on a temp dir and port 0, creates what the operations act on (keys
with notification jobs, a delivered operator message), writes a schemathesis
configuration that puts their ids and secrets among the generated values, and
runs `st run` against the daemon's own /openapi.json, in two passes (PASSES).
hooks.py gives the admin operations an admin key. Exits non-zero when any check
failed in either pass, or the daemon died.

Run through tests/contract/run.sh, which makes the virtualenv and builds the
binaries.
"""

import argparse
import datetime
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
import time

CONFIG = """
[server]
listen = "127.0.0.1:0"
state_dir = "{dir}/state"
admin_socket = "{dir}/apikeyd.sock"
worker_threads = 2

[auth]
trusted_proxies = ["127.0.0.1/32"]
query_param = "api_key"

[[auth.routes]]
prefix = "/catalog"
scope = "catalog:read"

[[auth.routes]]
prefix = "/catalog/sync"
scope = "catalog:sync"

# Generated keys fail verification all the time: with the default bucket most
# verify and auth examples would only see 429 (tests/it/rate_limits.rs covers it).
[rate_limit]
failures_per_minute = 600
burst = 300

[ApiKey]
MaxExpirationPeriod = "p6m"
NotAccessedExpirationPeriod = "p3m"
DefaultExpirationPeriod = "p1y"
DefaultNotificationLeadTime = "p14d"
DefaultAlertSource = "operator"
# hooks.py makes a new admin key whenever the fuzzer has disabled the last one.
MaxKeysPerUser = 0

[alerts]
retry_initial = "pt1s"
retry_max = "pt2s"
max_attempts = 2

[groups.Synchronizer]
scopes = ["catalog:read", "catalog:sync"]
create_keys = true

[groups.Admin]
scopes = ["catalog:read", "catalog:write", "catalog:sync", "apikeyd:admin"]
create_keys = true
manage_all_keys = true

[users.admin]
email = "admin@example.com"
groups = ["Admin"]
unix_user = "{login}"

[users.alice]
email = "alice@example.com"
groups = ["Synchronizer"]
"""

# Every check of schemathesis runs (its default) except these, switched off in
# the generated schemathesis.toml:
# - positive_data_acceptance: a request valid by the schema may still break a
#   rule the schema cannot say (a duplicate name, an expiry past
#   MaxExpirationPeriod, a scope the owner's groups do not grant, a period that is
#   not ISO 8601), which the daemon refuses with a documented 400 or 409.
# - use_after_free, ensure_resource_availability: they follow the results of one
#   operation into the next (the stateful phase), which is not run: the fuzzer
#   removes and disables the very objects the next operation would look for.
# - object_level_authorization: needs a second caller's credentials; the owner
#   and admin rules have their own integration tests (tests/it/authz.rs).
# - unsupported_method on /v1/auth, /v1/auth/ and /v1/auth/{path}: forward-auth
#   answers every method (Envoy's ext_authz sends the client's own, WebDAV's
#   PROPFIND included), and OpenAPI can name only eight; the document lists them.
OFF = ["positive_data_acceptance", "use_after_free", "ensure_resource_availability",
       "object_level_authorization"]

# The operations in two passes. Admin operations disable, rotate and remove every
# key they find in the listings; verification and forward-auth go first, while
# the keys they are given still work.
PASSES = [
    ("verify, forward-auth and status", r"^/(v1/(verify|auth)|healthz$|metrics$|openapi\.json$)"),
    ("admin", r"^/v1/admin/"),
]


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)


class Daemon:
    def __init__(self, bins, work):
        self.bins = bins
        self.work = work
        self.config = work / "apikeyd.toml"
        login = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
        self.config.write_text(CONFIG.format(dir=work, login=login))
        self.log = open(work / "daemon.log", "w")
        self.proc = subprocess.Popen(
            [str(bins / "apikeyd"), "--config", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env={**os.environ, "RUST_LOG": "warn"},
        )
        line = self.proc.stdout.readline()
        m = re.search(r"tcp=(\S+)", line)
        if not m:
            self.stop()
            sys.exit(f"apikeyd did not start: {line!r}; log in {work / 'daemon.log'}")
        self.addr = m.group(1)
        deadline = time.monotonic() + 20
        while self.ctl_status(["whoami"]) != 0:
            if time.monotonic() > deadline:
                self.stop()
                sys.exit("apikeyd's admin socket did not answer")
            time.sleep(0.05)

    def ctl_status(self, args):
        return subprocess.run(self.ctl_cmd(args), capture_output=True).returncode

    def ctl_cmd(self, args):
        return [str(self.bins / "apikeyctl"), "--socket", str(self.work / "apikeyd.sock"), *args]

    def ctl(self, *args):
        return json.loads(run(self.ctl_cmd([*args, "--json"])).stdout)

    def stop(self):
        self.proc.kill()
        self.proc.wait()


def wait_for(what, f, timeout=20):
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            sys.exit(f"setup: {what} did not happen within {timeout} s")
        time.sleep(0.1)


def setup(d):
    """The objects the operations act on; returns the values the fuzzer may use."""
    soon = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=2))
    target = d.ctl("key", "create", "--user", "alice", "--name", "contract-target",
                   "--scopes", "catalog:read,catalog:sync", "--expires-in", "p3m")
    # A notification due at once, through the operator source: delivered, it
    # leaves an operator message whose id the message operations can use.
    messenger = d.ctl("key", "create", "--user", "alice", "--name", "contract-messenger",
                      "--scopes", "catalog:read", "--expires-in", "p1m",
                      "--notify-at", soon.strftime("%Y-%m-%dT%H:%M:%SZ"),
                      "--alert-source", "operator")
    messages = wait_for("an operator message", lambda: d.ctl("message", "list")["messages"])
    jobs = d.ctl("job", "list")["jobs"]
    return {
        "keys": [target["id"], messenger["id"]],
        "jobs": [j["id"] for j in jobs],
        "messages": [str(m["id"]) for m in messages],
        "secrets": [target["key"], messenger["key"]],
    }


def toml_list(values):
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def st_config(values, examples):
    """schemathesis.toml: the checks, and real ids, secrets and routes among the
    generated values. The admin key comes from hooks.py."""
    off = "\n".join(f"{c}.enabled = false" for c in OFF)
    return f"""
[generation]
max-examples = {examples}

[checks]
{off}

[[operations]]
include-path-regex = "^/v1/auth"
checks.unsupported_method.enabled = false

[dictionaries.keys]
values = {toml_list(values["keys"])}

[dictionaries.jobs]
values = {toml_list(values["jobs"])}

[dictionaries.messages]
values = {toml_list(values["messages"])}

[dictionaries.secrets]
values = {toml_list(values["secrets"])}

[dictionaries.bearers]
values = {toml_list([f"Bearer {s}" for s in values["secrets"]])}

[dictionaries.uris]
values = ["/catalog/items", "/catalog/sync/run", "/elsewhere", "/catalog/../x"]

[dictionaries.scopes]
values = ["catalog:read", "catalog:sync", "apikeyd:admin"]

[parameters]
"query.key" = {{ dictionary = "keys", probability = 0.5 }}
"body.key" = {{ dictionary = "secrets", probability = 0.5 }}
"header.X-Api-Key" = {{ dictionary = "secrets", probability = 0.5 }}
"header.Authorization" = {{ dictionary = "bearers", probability = 0.5 }}
"header.X-Forwarded-Uri" = {{ dictionary = "uris", probability = 0.5 }}
"header.X-Original-URI" = {{ dictionary = "uris", probability = 0.3 }}
"header.X-Required-Scope" = {{ dictionary = "scopes", probability = 0.5 }}

[[operations]]
include-path-regex = "^/v1/admin/keys/"
parameters = {{ "path.id" = {{ dictionary = "keys", probability = 0.5 }} }}

[[operations]]
include-path-regex = "^/v1/admin/jobs/"
parameters = {{ "path.id" = {{ dictionary = "jobs", probability = 0.5 }} }}

[[operations]]
include-path-regex = "^/v1/admin/messages/"
parameters = {{ "path.id" = {{ dictionary = "messages", probability = 0.5 }} }}
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=100,
                    help="most test cases generated per operation and phase (default 100)")
    ap.add_argument("--bins", required=True, type=pathlib.Path,
                    help="directory holding apikeyd and apikeyctl")
    ap.add_argument("--report-dir", type=pathlib.Path,
                    help="keep schemathesis' JUnit and NDJSON reports here")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--pass", dest="only", choices=[n.split()[0].rstrip(",") for n, _ in PASSES],
                    help="run only this pass (to reproduce a failure with its --seed)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (daemon log)")
    args, rest = ap.parse_known_args()

    work = pathlib.Path(tempfile.mkdtemp(prefix="apikeyd-contract."))
    d = Daemon(args.bins.resolve(), work)
    status = 1
    try:
        values = setup(d)
        (work / "schemathesis.toml").write_text(st_config(values, args.examples))
        st = pathlib.Path(sys.executable).parent / "st"
        env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": str(pathlib.Path(__file__).with_name("hooks.py")),
            "APIKEYD_CONTRACT_CTL": str(d.bins / "apikeyctl"),
            "APIKEYD_CONTRACT_SOCKET": str(work / "apikeyd.sock"),
        }
        statuses = []
        for name, regex in PASSES:
            if args.only and not name.startswith(args.only):
                continue
            cmd = [
                str(st), "--config-file", str(work / "schemathesis.toml"), "run",
                f"http://{d.addr}/openapi.json",
                "--include-path-regex", regex,
                "--phases", "examples,coverage,fuzzing",
                # One worker: two gain nothing on two cores the daemon shares, and
                # hypothesis in CPython before 3.11.8 fails with "AST constructor
                # recursion depth mismatch" when threads parse at once (gh-106905).
                "--workers", "1",
                "--request-timeout", "10",
                "--no-color",
                "--suppress-health-check", "all",
            ]
            if args.seed is not None:
                cmd += ["--seed", str(args.seed)]
            if args.report_dir:
                cmd += ["--report", "junit,ndjson",
                        "--report-dir", str(args.report_dir / name.split()[0].rstrip(","))]
            cmd += rest
            print(f"== {name}\n+ {' '.join(cmd)}", flush=True)
            statuses.append(subprocess.run(cmd, cwd=work, env=env).returncode)
        status = max(statuses)
        if d.proc.poll() is not None:
            print(f"apikeyd exited during the run ({d.proc.returncode})", file=sys.stderr)
            status = status or 1
    finally:
        d.stop()
        if args.keep or status != 0:
            print(f"daemon log and config kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
