#!/usr/bin/env bash
# Runs the whole test suite: formatting, lints, unit and multi-process tests.
# Installs what it needs on a fresh Debian machine with only the Rust toolchain.
set -euo pipefail
cd "$(dirname "$0")/.."
export CAIRN_TEST_TOOLS=1
source scripts/setup.sh

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The multi-process tests run the `cairn` binary built here.
cargo build --bin cairn
cargo nextest run --workspace --no-fail-fast
# Failures injected at each step of the two-phase commit: metad built with its
# failpoints, in a test binary of its own (the failpoint registry is global).
cargo nextest run -p cairn-tests --features failpoints --test failpoints
