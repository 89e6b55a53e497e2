#!/usr/bin/env bash
# Set everything up and run every check: lint, format, types, Dockerfile lint,
# and the test suite on the newest and the oldest supported Python, each in its
# own venv (.venv and .venv-3.X), with warnings as errors.
#
#   scripts/test.sh                   # everything
#   scripts/test.sh -k report -x      # extra arguments go to both pytest runs
#
# The tests need PostgreSQL: BSO_TEST_POSTGRES_URL (an admin URL; default
# postgresql+asyncpg://postgres@127.0.0.1:5432/postgres). A local server that
# is down is started with pg_ctlcluster where that exists. The browser tests need
# Debian's chromium and chromium-driver: installed with apt-get when missing.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=scripts/lib.sh
. scripts/lib.sh

step "Python 3.11: the examples' torch build and the Zeus 0.16 server need it"
python311="$(SUPPORTED_PYTHONS=3.11 find_python oldest)" \
    && [ "$(python_version "$python311")" = 3.11 ] \
    || die "no Python 3.11 here (on PATH or in pyenv's versions): the training examples" \
        "(tests/examples) and the Zeus 0.16 server (tests/zeus_import) need it; install it" \
        "rather than run the suite without them"
echo "Python 3.11: $python311"

step "Python environment of the newest supported Python"
ensure_venv "$VENV_DIR" newest dev
newest="$(python_version "$VENV_DIR/bin/python")"
oldest="$(python_version "$(find_python oldest)")"
[ "$oldest" = 3.11 ] \
    || die "the oldest Python found is $oldest, not 3.11: the examples cannot run"  # unreachable

step "Services and tools"
pg_url="${BSO_TEST_POSTGRES_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}"
read -r pg_host pg_port < <(
    "$VENV_DIR/bin/python" -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(p.hostname or "127.0.0.1", p.port or 5432)' "$pg_url"
)
ensure_postgres "$pg_host" "$pg_port"
ensure_mariadb  # a Zeus server's MySQL database (tests/zeus_import/)
ensure_chromium  # browser tests of the dashboard and API docs
ensure_deploy_tools  # strace and kubectl (tests/test_k8s.py)

# The examples (tests/examples, marker "examples") train with torch, pinned to the
# CPU build of 2.13.0 that exists here for Python 3.11 only: they run in the
# oldest Python's venv (.venv-3.11), and every other run deselects them with
# -m "not examples" (pytest counts them as deselected in its summary line).
oldest_venv=""
examples_venv="$VENV_DIR"
if [ "$oldest" != "$newest" ]; then
    oldest_venv=".venv-$oldest"
    examples_venv="$oldest_venv"
else
    echo "Only Python $newest is available here: the suite runs once."
fi

lint_checks() {
    "$VENV_DIR/bin/ruff" check .
    "$VENV_DIR/bin/ruff" format --check .
    "$VENV_DIR/bin/mypy" app tests bench client/bso_client
    "$VENV_DIR/bin/hadolint" Dockerfile
}

# Three independent jobs at once: the oldest Python's venv with the training
# packages, the Zeus server's venv, and the checks that need only $VENV_DIR.
# From a fresh clone on 2 busy cores (load 6) the first pytest started after
# 254 s, against 286 s one after the other. The two bso installs stay one after
# the other: both write bso.egg-info into the checkout.
step "At once: ${oldest_venv:-$VENV_DIR} with the training packages; .venv-zeus; ruff, mypy --strict, hadolint"
examples_job="ensure_training_packages $examples_venv"
[ -n "$oldest_venv" ] && examples_job="ensure_venv $oldest_venv oldest dev; $examples_job"
in_parallel \
    "$examples_job" \
    "ensure_zeus_venv" \
    "lint_checks"

# Where torch is not installed, the examples' tests are deselected, not skipped.
# The oldest Python also leaves out the modules marked "once" (tests/conftest.py
# says why each is one): 150 s of a 930 s run on 2 busy cores (load 5-8).
newest_marks=(-m "not examples")
oldest_marks=(-m "not once")
[ "$examples_venv" = "$VENV_DIR" ] && newest_marks=()

# --dist loadscope: all tests of a module on one worker, so that a module's
# servers and browser (module-scoped fixtures) start once, not on both workers.
# The suite took as long either way (233 s vs 239 s on Python 3.13, load ~4).
step "pytest on Python $newest"
"$VENV_DIR/bin/pytest" -n 2 --dist loadscope "${newest_marks[@]}" "$@"

if [ -n "$oldest_venv" ]; then
    step "pytest on Python $oldest"
    "$oldest_venv/bin/pytest" -n 2 --dist loadscope "${oldest_marks[@]}" "$@"
fi
