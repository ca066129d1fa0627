#!/usr/bin/env bash
# Install everything the integration-test bed needs on a Debian 12 machine
# (run as root). Idempotent: only installs what is missing.
#   apt: etcd, haproxy, patroni, pgbackrest, podman (+runc), debootstrap,
#        nftables (tests/etcd_stall cuts one etcd member off its peers),
#        lz4, lzop and xz-utils (reference tools the codec tests compress with),
#        the deployment kit's validators (tests/deploy_kit.rs): systemd
#        (systemd-analyze), ignition (ignition-validate), python3-botocore,
#        python3-venv, ...
#   pip: python-hcl2 (tests/deploy_kit.rs parses the Nomad job) into the venv
#        /opt/tusk-test/venv, which also sees Debian's python3-botocore
#   cargo: garage (S3 server), built once into ~/.cargo/bin (~11 min on 2 cores)
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
PKGS=(etcd-server etcd-client haproxy patroni pgbackrest podman runc debootstrap
      openssl curl uidmap lz4 lzop xz-utils nftables
      systemd ignition python3-botocore python3-venv)
# garage needs a C toolchain for its bundled libraries.
command -v cc >/dev/null 2>&1 || PKGS+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || PKGS+=(pkg-config)

# Debian's postgresql-common would create and start a "main" cluster on 5432
# when a postgresql-NN package is installed (patroni/pgbackrest pull one in).
conf=/etc/postgresql-common/createcluster.conf
mkdir -p "$(dirname "$conf")"
if ! grep -qE '^\s*create_main_cluster\s*=\s*false' "$conf" 2>/dev/null; then
  if [ -f "$conf" ] && grep -qE '^\s*#?\s*create_main_cluster' "$conf"; then
    sed -i -E 's/^\s*#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' "$conf"
  else
    echo 'create_main_cluster = false' >>"$conf"
  fi
fi

missing=()
for p in "${PKGS[@]}"; do
  [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = 'install ok installed' ] \
    || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-testbed: apt-get install ${missing[*]}"
  apt-get update -qq
  # confold: keep our pre-seeded createcluster.conf.
  apt-get install -y -qq -o Dpkg::Options::=--force-confdef \
    -o Dpkg::Options::=--force-confold "${missing[@]}"
fi

# Postinst scripts may have started daemons; tests start their own.
for svc in etcd haproxy patroni; do
  service "$svc" stop >/dev/null 2>&1 || true
  update-rc.d "$svc" disable >/dev/null 2>&1 || true
  systemctl disable --now "$svc" >/dev/null 2>&1 || true
done

# python-hcl2 for tests/deploy_kit.rs, in a venv of Debian's python3 (Debian
# 12 refuses pip installs into the system's python); --system-site-packages
# so that the same interpreter also imports Debian's python3-botocore.
# Pinned: the test reads this version's JSON form of HCL.
venv=/opt/tusk-test/venv
hcl2_version=8.1.4
if ! "$venv/bin/python" -c "import botocore, hcl2, importlib.metadata as m; assert m.version('python-hcl2') == '$hcl2_version'" 2>/dev/null; then
  echo "install-testbed: python-hcl2 $hcl2_version into $venv"
  rm -rf "$venv"
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "python-hcl2==$hcl2_version"
fi

# garage 2.x (the scripts use its CLI): reuse an existing binary, otherwise
# build it from crates.io. --version prints e.g. "garage cargo:2.5.0 [...]".
export PATH="$HOME/.cargo/bin:$PATH"
gv=$(garage --version 2>/dev/null || true)   # (no grep -q pipe: pipefail)
if ! [[ $gv =~ ^garage\ (cargo:|v)?2\. ]]; then
  command -v cargo >/dev/null 2>&1 || { echo "install-testbed: cargo not found" >&2; exit 1; }
  echo "install-testbed: building garage 2.x with cargo install (about 11-17 minutes on 2 cores)..."
  cargo install --locked garage --version '^2'
fi

echo "install-testbed: etcd $(etcd --version | awk '/etcd Version/{print $3}')," \
  "haproxy $(haproxy -v | awk 'NR==1{print $3}')," \
  "patroni $(patroni --version 2>/dev/null | awk '{print $2}')," \
  "pgbackrest $(pgbackrest version | awk '{print $2}')," \
  "podman $(podman --version | awk '{print $3}')," \
  "runc $(runc --version | awk 'NR==1{print $3}')," \
  "openssl $(openssl version | awk '{print $2}')," \
  "curl $(curl --version | awk 'NR==1{print $2}')," \
  "garage $(garage --version | awk '{sub(/^(cargo:|v)/, "", $2); print $2}')," \
  "ignition-validate $(ignition-validate --version | awk '{print $3}')," \
  "botocore $("$venv/bin/python" -c 'import botocore; print(botocore.__version__)')," \
  "python-hcl2 $hcl2_version"
