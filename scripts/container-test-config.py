"""Used by scripts/container-test.sh: examples/config.toml pointed at a test bed.

usage: container-test-config.py EXAMPLE_TOML TESTBED_JSON OUT_DIR PASSWORD_HASH

Writes OUT_DIR/{config.toml, client_secret, token_key, ca.pem}, the files /etc/xoauth-proxy holds
in the systemd set-up of examples/xoauth-proxy.service. Everything else of the example stays:
state_dir, log format, token_key_file and client_secret_file under ${CREDENTIALS_DIRECTORY}, the
three listeners (on free loopback ports) and the account's allowed_from. Prints the IMAP, POP3,
SMTP and admin ports.
"""
import json
import os
import socket
import sys
import tomllib

example, testbed_json, out_dir, pw_hash = sys.argv[1:5]
tb = json.load(open(testbed_json))
with open(example, "rb") as f:
    cfg = tomllib.load(f)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)  # a TOML basic string for these values
    return str(v)


ca = "/etc/xoauth-proxy/ca.pem"
admin_port = free_port()
cfg["proxy"].update(admin_listen=f"127.0.0.1:{admin_port}", log_level="debug")
(provider,) = cfg["provider"]
provider.update(tenant=tb["tenant"], client_id=tb["client_id"], authority=tb["authority"], ca_file=ca)
upstreams = {"imap": tb["dovecot"]["imaps"], "pop3": tb["dovecot"]["pop3s"],
             "smtp": tb["postfix"]["submission"]}
ports = {}
for listener in cfg["listener"]:
    proto = listener["protocol"]
    ports[proto] = free_port()
    listener.update(listen=f"127.0.0.1:{ports[proto]}", upstream=upstreams[proto]["address"],
                    upstream_tls=upstreams[proto]["tls"], upstream_ca_file=ca)
(account,) = cfg["account"]
account.update(login="scanner@contoso.test", password_hash=pw_hash, allowed_from=["scanner@contoso.test"])

lines = ["# examples/config.toml pointed at the test bed by scripts/container-test-config.py", "[proxy]"]
lines += [f"{k} = {value(v)}" for k, v in cfg["proxy"].items()]
for table in ("provider", "listener", "account"):
    for t in cfg[table]:
        lines += ["", f"[[{table}]]"] + [f"{k} = {value(v)}" for k, v in t.items()]
with open(os.path.join(out_dir, "config.toml"), "w") as f:
    f.write("\n".join(lines) + "\n")
with open(os.path.join(out_dir, "client_secret"), "w") as f:
    f.write(tb["client_secret"] + "\n")
with open(os.path.join(out_dir, "token_key"), "wb") as f:
    f.write(os.urandom(32))
with open(tb["ca_file"]) as src, open(os.path.join(out_dir, "ca.pem"), "w") as dst:
    dst.write(src.read())
print(ports["imap"], ports["pop3"], ports["smtp"], admin_port)
