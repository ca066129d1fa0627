#!/usr/bin/env bash
# Makes sure the build toolchain is available: cargo (the one on PATH or in
# ~/.cargo/bin, else rustup's stable toolchain) and protoc (etcd-client
# compiles etcd's protobuf definitions at build time).
set -euo pipefail
export PATH="$HOME/.cargo/bin:$PATH"
if ! command -v protoc >/dev/null 2>&1; then
  echo "install-rust: apt-get install protobuf-compiler"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler
fi
if command -v cargo >/dev/null 2>&1; then
  exit 0
fi
echo "install-rust: installing the stable Rust toolchain with rustup"
command -v curl >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq curl ca-certificates; }
command -v cc >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential pkg-config; }
curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
