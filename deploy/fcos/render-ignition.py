#!/usr/bin/env python3
"""Render the Ignition config (spec 3.3.0) of deploy/fcos/tusk.bu without Butane.

    python3 deploy/fcos/render-ignition.py [--files-dir DIR] [-o OUT]

The translation is Butane's for this config (`butane --strict --pretty
--files-dir deploy deploy/fcos/tusk.bu`): the same users, directories,
files and links, in the same order, each file's contents read from
--files-dir (default: the kit's deploy/ directory) and written as a data:
URL, URL-escaped or base64, whichever is shorter, as Butane chooses; keys in
the order Butane's JSON has them. One difference: Butane also tries gzip and
uses it when that is shorter; this script never compresses, so the file
stays readable (Ignition reads both).

The configuration below mirrors tusk.bu; tests/deploy_kit.rs translates
tusk.bu on its own and checks that it describes the same tusk.ign, and that
the committed tusk.ign is this script's output. Python 3 standard library
only.
"""

import argparse
import base64
import json
import sys
from pathlib import Path

SPEC = "3.3.0"  # what Butane's fcos 1.4.0 produces
USER = "tusk"
HOME = "/home/tusk"
UNIT_DIR = HOME + "/.config/systemd/user"

# (path, mode, owner user, owner group) of each directory, in tusk.bu's order.
DIRECTORIES = [
    ("/etc/tusk", 0o750, None, USER),
    ("/etc/ssl/etcd-certs", 0o750, USER, USER),
    ("/var/lib/tusk", 0o755, USER, USER),
    (HOME + "/.config", 0o755, USER, USER),
    (HOME + "/.config/systemd", 0o755, USER, USER),
    (UNIT_DIR, 0o755, USER, USER),
    (UNIT_DIR + "/default.target.wants", 0o755, USER, USER),
]

# (path, mode, user, group, local file relative to --files-dir or None).
FILES = [
    ("/var/lib/systemd/linger/tusk", 0o644, None, None, None),
    ("/etc/tusk/tusk.env", 0o640, None, USER, "systemd/tusk.env"),
    ("/etc/ssl/etcd-certs/ca.pem", 0o644, USER, USER, "fcos/etcd-certs/ca.pem"),
    ("/etc/ssl/etcd-certs/client-cert.pem", 0o644, USER, USER, "fcos/etcd-certs/client-cert.pem"),
    ("/etc/ssl/etcd-certs/client-cert-key.pem", 0o600, USER, USER, "fcos/etcd-certs/client-cert-key.pem"),
    (UNIT_DIR + "/tusk.service", 0o644, USER, USER, "systemd/tusk.service"),
]

# (path, user, group, target) of each symbolic link.
LINKS = [
    (UNIT_DIR + "/default.target.wants/tusk.service", USER, USER, UNIT_DIR + "/tusk.service"),
]

# RFC 2396 unreserved characters: left as they are in a data: URL, every
# other byte is %XX (upper-case hex), as Butane's encoder does.
UNRESERVED = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.!~*'()")


def data_url(contents: bytes) -> str:
    """Butane's choice between the two encodings: the shorter one, URL-escaped
    when both are equally long."""
    escaped = "," + "".join(chr(b) if b in UNRESERVED else "%%%02X" % b for b in contents)
    b64 = ";base64," + base64.b64encode(contents).decode("ascii")
    return "data:" + (b64 if len(b64) < len(escaped) else escaped)


def node(path, user, group):
    """Ignition's Node fields in the JSON order: group, path, user."""
    out = {}
    if group is not None:
        out["group"] = {"name": group}
    out["path"] = path
    if user is not None:
        out["user"] = {"name": user}
    return out


def config(files_dir: Path) -> dict:
    directories = []
    for path, mode, user, group in DIRECTORIES:
        d = node(path, user, group)
        d["mode"] = mode
        directories.append(d)
    files = []
    for path, mode, user, group, local in FILES:
        f = node(path, user, group)
        if local is not None:
            source = files_dir / local
            try:
                contents = source.read_bytes()
            except OSError as e:
                sys.exit(f"render-ignition: {path}: cannot read {source}: {e}")
            f["contents"] = {"compression": "", "source": data_url(contents)}
        f["mode"] = mode
        files.append(f)
    links = []
    for path, user, group, target in LINKS:
        link = node(path, user, group)
        link["target"] = target
        links.append(link)
    return {
        "ignition": {"version": SPEC},
        "passwd": {"users": [{"name": USER}]},
        "storage": {"directories": directories, "files": files, "links": links},
    }


def main() -> None:
    default_dir = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files-dir", type=Path, default=default_dir,
                        help="directory the local files are read from (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, help="write here instead of to stdout")
    args = parser.parse_args()
    text = json.dumps(config(args.files_dir), indent=2) + "\n"
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text)


if __name__ == "__main__":
    main()
