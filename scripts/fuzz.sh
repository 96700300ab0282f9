#!/bin/bash
# fuzz.sh [SECONDS]: runs every Go fuzz target of the module (each func
# FuzzXxx in a _test.go file) for SECONDS each (default $FUZZTIME or 60),
# one after the other. Inputs that fail are written by go test under the
# package's testdata/fuzz/FuzzXxx/, where every later `go test` (make test)
# runs them as regression cases: commit them with the fix.
set -euo pipefail
export PATH="$PATH:/usr/local/go/bin"
secs=${1:-${FUZZTIME:-60}}
cd "$(dirname "$0")/.."
fail=0
while IFS=: read -r file name; do
	pkg=./$(dirname "$file")
	echo "fuzz: $pkg $name for ${secs}s"
	if ! go test -run '^$' -fuzz "^${name}\$" -fuzztime "${secs}s" -parallel "${FUZZ_PARALLEL:-2}" "$pkg" 2>&1 |
		grep -v '^fuzz: elapsed'; then
		fail=1
	fi
done < <(grep -rHo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*' . | sed 's/:func /:/' | sed 's|^\./||' | sort)
exit $fail
