#!/usr/bin/env bash
# Refresh the browser assets that the service serves itself (app/static/vendor/):
# Swagger UI and ReDoc for /docs and /redoc, their fonts, and Chart.js for the
# dashboard. They are vendored so that no page loads anything from another host
# (GPU clusters often have no internet access).
#
#   scripts/vendor_assets.sh          # needs npm; run from anywhere in the repo
#
# To upgrade, change a version below, run the script, look at the diff, and run
# the browser tests (tests/dashboard/test_browser.py): they fail on any request
# to another host and on any browser console error.
set -euo pipefail

SWAGGER_UI_VERSION="5.35.0"
REDOC_VERSION="2.5.4"
CHARTJS_VERSION="4.6.1"
FONTSOURCE_VERSION="5.3.0" # @fontsource/roboto and @fontsource/montserrat

cd "$(dirname "${BASH_SOURCE[0]}")/.."
dest="app/static/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Unpack an npm package into $work/$2 (npm pack: the registry's tarball as published).
unpack() {
    local spec="$1" name="$2" tarball
    tarball="$(cd "$work" && npm pack --silent "$spec" | tail -n 1)"
    mkdir -p "$work/$name"
    tar -xzf "$work/$tarball" -C "$work/$name" --strip-components=1
}

# Copy a JavaScript or CSS file without its trailing sourceMappingURL comment (no .map
# is shipped). Only whole-line (JS) or end-of-line (CSS) comments: bundles also hold
# the same text inside string literals, which must stay.
copy_stripped() {
    case "$1" in
        *.css) sed -e 's|/\*# sourceMappingURL=[^*]*\*/$||' "$1" >"$2" ;;
        *) sed -e '/^\/\/# sourceMappingURL=/d' "$1" >"$2" ;;
    esac
}

rm -rf "$dest"
mkdir -p "$dest/swagger-ui" "$dest/redoc" "$dest/chartjs" "$dest/fonts"

unpack "swagger-ui-dist@$SWAGGER_UI_VERSION" swagger-ui
copy_stripped "$work/swagger-ui/swagger-ui-bundle.js" "$dest/swagger-ui/swagger-ui-bundle.js"
copy_stripped "$work/swagger-ui/swagger-ui.css" "$dest/swagger-ui/swagger-ui.css"
cp "$work/swagger-ui/LICENSE" "$work/swagger-ui/NOTICE" "$dest/swagger-ui/"
cp "$work/swagger-ui/swagger-ui-bundle.js.LICENSE.txt" "$dest/swagger-ui/"

unpack "redoc@$REDOC_VERSION" redoc
copy_stripped "$work/redoc/bundles/redoc.standalone.js" "$dest/redoc/redoc.standalone.js"
cp "$work/redoc/LICENSE" "$dest/redoc/"
cp "$work/redoc/bundles/redoc.standalone.js.LICENSE.txt" "$dest/redoc/"
# ReDoc's sidebar footer always renders <img src="https://cdn.redoc.ly/...logo-mini.svg">
# (no option turns it off): point it at an empty inline SVG so that nothing is fetched.
logo='https://cdn.redoc.ly/redoc/logo-mini.svg'
blank='data:image/svg+xml,%3Csvg xmlns=%22http://www.w3.org/2000/svg%22 width=%221%22 height=%221%22/%3E'
grep -qF "$logo" "$dest/redoc/redoc.standalone.js" || {
    echo "error: ReDoc's logo URL is gone; re-check the bundle for external requests" >&2
    exit 1
}
sed -i "s|$logo|$blank|g" "$dest/redoc/redoc.standalone.js"

unpack "chart.js@$CHARTJS_VERSION" chartjs
cp "$work/chartjs/dist/chart.umd.min.js" "$dest/chartjs/"
cp "$work/chartjs/LICENSE.md" "$dest/chartjs/"

# The fonts ReDoc's theme asks for (FastAPI's default page loads them from Google).
fonts_css="$dest/fonts/fonts.css"
echo "/* Latin subsets of @fontsource/roboto and @fontsource/montserrat $FONTSOURCE_VERSION. */" >"$fonts_css"
for family in roboto montserrat; do
    unpack "@fontsource/$family@$FONTSOURCE_VERSION" "$family"
    cp "$work/$family/LICENSE" "$dest/fonts/LICENSE-$family"
    for weight in 300 400 700; do
        file="$family-latin-$weight-normal.woff2"
        cp "$work/$family/files/$file" "$dest/fonts/"
        display="$(tr '[:lower:]' '[:upper:]' <<<"${family:0:1}")${family:1}"
        cat >>"$fonts_css" <<CSS
@font-face {
  font-family: '$display';
  font-style: normal;
  font-display: swap;
  font-weight: $weight;
  src: url(./$file) format('woff2');
}
CSS
    done
done

cat >"$dest/VERSIONS" <<TXT
Vendored by scripts/vendor_assets.sh from the npm registry; each folder has the licence.
swagger-ui-dist $SWAGGER_UI_VERSION  (Apache-2.0)  swagger-ui/
redoc $REDOC_VERSION  (MIT)  redoc/  (the Redocly logo URL replaced by an empty inline SVG)
chart.js $CHARTJS_VERSION  (MIT)  chartjs/
@fontsource/roboto $FONTSOURCE_VERSION, @fontsource/montserrat $FONTSOURCE_VERSION  (OFL-1.1)  fonts/
sourceMappingURL comments are removed (no source maps are shipped).
TXT

echo "Vendored into $dest:"
du -sh "$dest"/*
