#!/usr/bin/env bash
# Make the throwaway secrets the examples need: one token per (owner, trainer) pair, written
# once under examples/.secrets/ (git-ignored, readable by you alone). The owner reads the file
# through `token_file`; the trainer gets the same value in an environment variable (see the
# Makefile's example-trainer targets), so both sides always hold the same token.
#
#   scripts/example.sh [EXAMPLES_DIR]      (default: the examples/ folder next to this script)
#
# Running it again keeps existing tokens, so an owner that is already serving keeps working.
set -euo pipefail

examples=${1:-"$(cd "$(dirname "$0")/.." && pwd)/examples"}
python=${PYTHON:-python3}
secrets_dir="$examples/.secrets"

umask 077
mkdir -p "$secrets_dir"
chmod 700 "$secrets_dir"

# The pairs the example configs name: <owner name>_<trainer id>.token
for pair in owner-a_trainer-1 site-south_trainer-1; do
    token_file="$secrets_dir/$pair.token"
    if [ ! -s "$token_file" ]; then
        "$python" -c 'import secrets; print(secrets.token_urlsafe(24))' >"$token_file.tmp"
        mv "$token_file.tmp" "$token_file"
        echo "created $token_file"
    fi
    chmod 600 "$token_file"
done
echo "example tokens are in $secrets_dir/ (mode 0600)"
