#!/usr/bin/env bash
# A long run of the HTTP/1.1 client's differential harness: generated upstream responses,
# split at random points, decoded by outrigger's client and by hyper's; they must agree or
# differ in a listed, stricter way (docs/architecture.md). The suite runs 256 cases.
#   benches/h1-differential.sh [CASES]     (default 200000: about 10 s, after a release build of the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
OUTRIGGER_DIFF_CASES="${1:-200000}" cargo test --release -p outrigger-proxy --lib \
  h1::decode::tests::our_decoder_and_hypers_agree_on_any_response -- --exact --nocapture
