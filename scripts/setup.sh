# Sourced by dev.sh and test.sh: installs the system packages and cargo tools
# Cairn needs when they are missing, and points cargo at a shared build cache.
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

missing=()
command -v clang >/dev/null || missing+=(clang)
[ -n "$(ls /usr/lib/llvm-*/lib/libclang.so 2>/dev/null)" ] || missing+=(libclang-dev)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v fusermount3 >/dev/null || missing+=(fuse3)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install cargo-nextest --locked
fi
# pjdfstest (the POSIX suite, Rust port) for tests/tests/pjdfstest.rs (test.sh
# only), kept outside the clone so every checkout and CI reuse it.
if [ -n "${CAIRN_TEST_TOOLS:-}" ] && [ -z "${PJDFSTEST:-}" ]; then
  tools=/var/cache/cairn-tools
  if ! mkdir -p "$tools" 2>/dev/null || [ ! -w "$tools" ]; then
    tools="$HOME/.cache/cairn-tools"
  fi
  export PJDFSTEST="$tools/bin/pjdfstest"
  if [ ! -x "$PJDFSTEST" ]; then
    cargo install pjdfstest --version '^0.2' --locked --root "$tools"
  fi
fi

# boto3 (PyPI) for the S3 gateway's scripted client test (test.sh only).
if [ -n "${CAIRN_TEST_TOOLS:-}" ] && ! python3 -c 'import boto3' 2>/dev/null; then
  python3 -m pip install --quiet boto3
fi

# One build cache outside the clone, reused by every checkout and by CI.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/cache/cairn-target}"
if ! mkdir -p "$CARGO_TARGET_DIR" 2>/dev/null || [ ! -w "$CARGO_TARGET_DIR" ]; then
  export CARGO_TARGET_DIR="$HOME/.cache/cairn-target"
  mkdir -p "$CARGO_TARGET_DIR"
fi
