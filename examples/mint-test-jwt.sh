#!/bin/sh
# Prints a JWT for the quickstart and the footprint bench: signed with the test key
# testdata/jwt/trusted-rs256.key.pem (public, never trust it anywhere else), issuer
# https://idp.test.example, attributes {region: us-east}, valid for a day.
# Usage: examples/mint-test-jwt.sh SUBJECT AUDIENCE
set -eu
[ $# -eq 2 ] || { echo "usage: $0 SUBJECT AUDIENCE" >&2; exit 2; }
repo=$(cd "$(dirname "$0")/.." && pwd)
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"trusted-rs256"}' | b64url)
payload=$(printf '{"iss":"https://idp.test.example","sub":"%s","aud":"%s","iat":%d,"exp":%d,"attributes":{"region":"us-east"}}' \
    "$1" "$2" "$now" $((now + 86400)) | b64url)
sig=$(printf '%s.%s' "$header" "$payload" |
    openssl dgst -sha256 -sign "$repo/testdata/jwt/trusted-rs256.key.pem" -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$sig"
