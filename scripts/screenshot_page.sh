#!/usr/bin/env bash
# Screenshot a page of the built book with headless Chromium (no network), to check by eye
# that figures render and no raw error shows.
#
#   scripts/screenshot_page.sh notebooks/02_finding_retrieval_heads [out.png]
set -euo pipefail
cd "$(dirname "$0")/.."
page="_build/html/${1%.html}.html"
out="${2:-_build/screenshots/$(basename "${1%.html}").png}"
[ -f "$page" ] || { echo "No $page: build the book first (scripts/build_book.sh)." >&2; exit 1; }
mkdir -p "$(dirname "$out")"
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "Install Chromium (apt-get install -y chromium)." >&2; exit 1; }
"$browser" --headless --no-sandbox --disable-gpu --disable-background-networking \
  --disable-component-update --disable-sync --no-first-run --hide-scrollbars \
  --window-size="${WINDOW:-1280,2000}" --screenshot="$(realpath -m "$out")" "file://$(realpath "$page")" 2>/dev/null
echo "$out"
