# syntax=docker/dockerfile:1
#
# bso: Zeus-compatible batch size optimizer service.
#
#   docker build -t bso .
#   docker run --rm -p 8000:8000 -e BSO_DATABASE_URL=postgresql+asyncpg://u:p@host:5432/db bso
#
# Stage 1 builds the project and its dependencies into a virtual environment
# from pyproject.toml; stage 2 copies only that environment onto a clean slim
# image. Both stages use the same base so the venv's interpreter path matches.

ARG PYTHON_IMAGE=python:3.13-slim-bookworm

# --------------------------------------------------------------------------- #
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH="/opt/venv/bin:${PATH}"

WORKDIR /src
# Only what the wheel needs (see .dockerignore): metadata, package, migrations.
COPY pyproject.toml README.md ./
COPY app ./app
COPY migrations ./migrations

# A non-editable install: the final image carries no source tree to import from.
RUN pip install --no-cache-dir . \
    && bso --help > /dev/null

# --------------------------------------------------------------------------- #
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="bso" \
      org.opencontainers.image.description="Zeus-compatible batch size optimizer service" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BSO_HOST=0.0.0.0 \
    BSO_PORT=8000

# Unprivileged user; --no-log-init keeps the image small with a fixed high UID.
RUN groupadd --system --gid 10001 bso \
    && useradd --system --uid 10001 --gid bso --no-log-init \
       --home-dir /app --shell /usr/sbin/nologin bso

WORKDIR /app
# The venv holds everything, migrations included (`bso migrate` finds them in
# the installed `migrations` package): no source tree in the final image.
COPY --from=builder /opt/venv /opt/venv
# The embedded SQLite default (./data/bso.db) is the only thing written here.
RUN mkdir -p /app/data && chown bso:bso /app/data

USER 10001:10001
EXPOSE 8000

# No curl in slim images: probe liveness with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

# Worker count comes from BSO_WORKERS; the database from BSO_DATABASE_URL.
CMD ["bso", "serve", "--host", "0.0.0.0", "--port", "8000"]
