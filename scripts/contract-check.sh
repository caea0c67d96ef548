#!/usr/bin/env bash
# `buf breaking` for the contract in protos/ (docs/releasing.md): against the last release, the
# newest tag vX.Y.Z that HEAD contains; before the first release, against the commit where this
# branch left main (on main itself: HEAD, so uncommitted changes are checked). BUF is the buf
# command (the Makefile passes its pinned one).
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-buf}

base=$(git describe --tags --abbrev=0 --match 'v[0-9]*' 2>/dev/null || true)
what="the last release, $base"
if [[ -z "$base" ]]; then
  for main in main origin/main; do
    if git rev-parse --quiet --verify "$main^{commit}" >/dev/null; then
      base=$(git merge-base HEAD "$main")
      what="main at ${base:0:12} (no release tag yet)"
      break
    fi
  done
fi
if [[ -z "$base" ]]; then
  echo "contract-check: no release tag and no main branch here; buf breaking skipped"
  exit 0
fi

against=$(mktemp -d)
trap 'rm -rf "$against"' EXIT
git archive "$base" protos | tar -x -C "$against"
echo "buf breaking: protos/ against $what"
$BUF breaking protos --against "$against/protos"
