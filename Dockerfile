# fwdproxy as a container: non-root, health-checked, configured by flags or FWDPROXY_* variables.
#   docker build -t fwdproxy .        (scripts/container-check builds and proves it with podman)
#   docker run -p 8080:8080 fwdproxy --allow-from 10.0.0.0/8
# The proxy needs nothing but the standard library, so the package is copied in rather than
# pip-installed: that works the same on python:3.12-slim and on a bare Debian with python3,
# and leaves no pip cache, build tools or tests in the image.
ARG BASE_IMAGE=python:3.12-slim
FROM ${BASE_IMAGE}

LABEL org.opencontainers.image.title="fwdproxy" \
      org.opencontainers.image.description="A forward HTTP/1.1 proxy with CONNECT tunnelling"

# Listen on every interface of the container: with neither --allow-from beyond loopback nor
# --auth, fwdproxy then refuses to start rather than run as an open proxy. JSON log lines on
# stdout/stderr suit a log pipeline; FWDPROXY_LOG_FORMAT=text or --log-format text undoes it.
ENV PYTHONPATH=/opt/fwdproxy \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FWDPROXY_HOST=0.0.0.0 \
    FWDPROXY_PORT=8080 \
    FWDPROXY_LOG_FORMAT=json

COPY proxy/ /opt/fwdproxy/proxy/
RUN set -eu; \
    python3 -c 'import sys; assert sys.version_info >= (3, 11), "fwdproxy needs Python 3.11+"'; \
    python3 -m compileall -q /opt/fwdproxy; \
    printf '#!/bin/sh\nexec python3 -m proxy "$@"\n' > /usr/local/bin/fwdproxy; \
    chmod 0755 /usr/local/bin/fwdproxy; \
    groupadd --gid 10001 fwdproxy; \
    useradd --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin fwdproxy

# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080
# fwdproxy stops accepting on SIGTERM, lets in-flight exchanges finish (up to 5 s) and exits 0.
STOPSIGNAL SIGTERM
# GET /healthz to the proxy's own port over loopback (FWDPROXY_PORT); exit 0 healthy, 1 not.
HEALTHCHECK --interval=15s --timeout=5s --start-period=5s --retries=3 \
    CMD ["python3", "-m", "proxy.server.health"]
ENTRYPOINT ["fwdproxy"]
CMD ["serve"]
