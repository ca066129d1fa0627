#!/usr/bin/env bash
# certs.sh DIR [extra SAN...]
# Test PKI (EC P-256, keys in PKCS#8 PEM) for etcd with mutual TLS:
#   ca.crt ca.key                 test CA
#   server.crt server.key         SAN IP:127.0.0.1, DNS:localhost + extras;
#                                 EKU serverAuth,clientAuth (etcd's gateway
#                                 dials itself with the server cert)
#   client.crt client.key         CN=tusk, EKU clientAuth
#   other-ca.crt other-ca.key     an unrelated CA
#   other-client.crt .key         client cert signed by the unrelated CA
# Extra SANs: "DNS:name", "IP:addr", or a bare name/IP (type guessed).
# Idempotent: does nothing when all files already exist.
set -Eeuo pipefail
trap 'echo "certs.sh: line $LINENO: $BASH_COMMAND failed (exit $?)" >&2' ERR

dir=${1:?usage: certs.sh DIR [extra SAN...]}
shift
files=(ca.crt ca.key server.crt server.key client.crt client.key
       other-ca.crt other-ca.key other-client.crt other-client.key)
mkdir -p "$dir"
all=1
for f in "${files[@]}"; do [ -s "$dir/$f" ] || all=0; done
[ "$all" = 1 ] && exit 0

san="IP:127.0.0.1,DNS:localhost"
for s in "$@"; do
  case "$s" in
    DNS:*|IP:*|URI:*) san+=",$s" ;;      # already typed
    *:*)              san+=",IP:$s" ;;   # bare IPv6 address
    *[!0-9.]*)        san+=",DNS:$s" ;;
    *)                san+=",IP:$s" ;;   # bare IPv4 address
  esac
done

# Work in a private temp dir, then move into place (no half-written sets).
tmp=$(mktemp -d "$dir/.certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"

key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1"; }

ca() { # ca NAME CN
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -subj "/CN=$2" -days 3650 -out "$1.crt" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign"
}

leaf() { # leaf NAME CN CA EXTENSIONS
  key "$1.key"
  openssl req -new -key "$1.key" -subj "/CN=$2" -out "$1.csr"
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyEncipherment" \
    "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid" "$4" >"$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$3.crt" -CAkey "$3.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days 3650 -extfile "$1.ext" \
    -out "$1.crt" 2>/dev/null
  rm -f "$1.csr" "$1.ext"
}

ca ca "tusk test CA"
leaf server localhost ca "extendedKeyUsage=serverAuth,clientAuth
subjectAltName=$san"
leaf client tusk ca "extendedKeyUsage=clientAuth"
ca other-ca "unrelated test CA"
leaf other-client tusk other-ca "extendedKeyUsage=clientAuth"

# Throwaway test keys: world-readable so daemons running as another user
# (e.g. patroni or tusk as "postgres") can read them too.
chmod 644 ./*.key ./*.crt
mv -f "${files[@]}" "$dir/"
