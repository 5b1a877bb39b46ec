# Datasource Gateway: slim image, non-root, state in the /data volume.
FROM python:3.11-slim AS build
WORKDIR /src
# httptools, uvloop and cryptography ship wheels for this platform; no compiler needed.
RUN python -m venv /opt/gateway
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN /opt/gateway/bin/pip install --no-cache-dir --upgrade pip \
 && /opt/gateway/bin/pip install --no-cache-dir .

FROM python:3.11-slim
ARG GATEWAY_BUILD_COMMIT=unknown
RUN groupadd --system --gid 10001 gateway \
 && useradd --system --uid 10001 --gid gateway --home-dir /app --shell /usr/sbin/nologin gateway \
 && mkdir -p /data /app/config/provisioning/datasources \
 && chown gateway:gateway /data
COPY --from=build /opt/gateway /opt/gateway
COPY config /app/config
WORKDIR /app
ENV PATH=/opt/gateway/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8480 \
    GATEWAY_DATA_DIR=/data \
    GATEWAY_CONFIG=/app/config/gateway.toml \
    GATEWAY_LOG_FORMAT=json \
    GATEWAY_BUILD_COMMIT=${GATEWAY_BUILD_COMMIT}
# Numeric, so a runtime can tell it is not root without reading the image's /etc/passwd (DL3066).
USER 10001:10001
VOLUME ["/data"]
EXPOSE 8480
# slim has no curl; the interpreter is there anyway. /health is 503 when the gateway itself fails.
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('GATEWAY_PORT', '8480'), timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve"]
