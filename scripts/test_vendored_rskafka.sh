#!/usr/bin/env bash
# Runs the vendored, patched rskafka's own unit tests (upstream's, plus the
# patch's), which foodpipe's workspace does not build: vendor/ is excluded
# and the vendored Cargo.toml has no dev-dependencies. A copy in a temporary
# directory gets the few dev-dependencies the unit tests need; upstream's
# integration tests (tests/, which want a Kafka cluster, Java and the C
# librdkafka) stay out.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cp -r "$here/vendor/rskafka" "$work/rskafka"
cat >> "$work/rskafka/Cargo.toml" <<'TOML'

[dev-dependencies]
assert_matches = "1.5"
proptest = "1"
proptest-derive = "0.5"
tokio = { version = "1.19", features = ["macros", "rt-multi-thread"] }

[workspace]
TOML
cd "$work/rskafka"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$here/target/vendored-rskafka}" cargo test --lib
