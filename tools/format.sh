#!/bin/bash
# tools/format.sh - the house formatting (.clang-format at the root) applied to every C/C++ file
# git tracks; with --check it changes nothing and fails listing the files that differ (CI).
set -euo pipefail
cd "$(dirname "$0")/.."
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	mapfile -t files < <(git ls-files '*.c' '*.h' '*.cpp')
else # an exported tree: the same sources, found by name
	mapfile -t files < <(find broker client common tests tools \
		-path tests/node_modules -prune -o -type f \( -name '*.c' -o -name '*.h' -o -name '*.cpp' \) -print | sort)
fi
if [[ "${1:-}" == --check ]]; then
	bad=()
	for f in "${files[@]}"; do
		clang-format --dry-run --Werror "$f" >/dev/null 2>&1 || bad+=("$f")
	done
	if ((${#bad[@]})); then
		echo "not formatted (run bash tools/format.sh): ${bad[*]}" >&2
		exit 1
	fi
	echo "format: ${#files[@]} files match .clang-format"
else
	clang-format -i "${files[@]}"
fi
