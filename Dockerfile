# Omiro's container image: `omiro serve` as a non-root user, configured by
# OMIRO_* environment variables (secrets also as OMIRO_*_FILE paths, e.g.
# Docker/Podman secrets under /run/secrets). See docs/operations.md.
#
#   docker build -t omiro .
#   docker run --rm -p 8080:8080 -e OMIRO_SESSION_SECRET="$(openssl rand -hex 32)" omiro

# -- build: a virtual environment with Omiro and its dependencies -------------
FROM debian:bookworm-slim AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY omiro_trio ./omiro_trio
COPY omiro_bench ./omiro_bench
COPY frontend ./frontend
# Wheels only: the final stage has no compiler, so nothing may need one. pip
# leaves the modules byte-compiled (the runtime user cannot write there).
RUN python3 -m venv /opt/omiro \
 && /opt/omiro/bin/pip install --no-cache-dir --only-binary=:all: . \
 && /opt/omiro/bin/pip uninstall -y -q pip

# -- final: the Python runtime and the environment, nothing else ----------------
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 omiro \
 && useradd --system --uid 10001 --gid omiro --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin omiro
COPY --from=build /opt/omiro /opt/omiro
ENV PATH=/opt/omiro/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    OMIRO_SERVER_HOST=0.0.0.0 \
    OMIRO_SERVER_PORT=8080
USER 10001:10001
EXPOSE 8080
# Liveness only (/healthz): a replica whose Redis is down is alive but not
# ready (/readyz), and must not be restarted for it.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('OMIRO_SERVER_PORT', '8080'), timeout=2)"]
# Exec form, no shell in between: SIGTERM reaches omiro, which drains (tells
# clients to reconnect elsewhere, then closes their sockets with 1012 after
# server.drain_grace_s). Give `docker stop -t` more than that grace.
STOPSIGNAL SIGTERM
ENTRYPOINT ["omiro"]
CMD ["serve"]
