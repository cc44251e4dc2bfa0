# The gateway as a small image: dependencies built in one stage, only the venv and the project in the next.
#   docker build -t gateway .
#   docker run -p 8080:8080 -e OPENAI_API_KEY=sk-... gateway          (or -e OPENAI_API_KEY_FILE=/run/secrets/...)
FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY gateway ./gateway
RUN python -m venv /venv && /venv/bin/pip install --no-cache-dir --disable-pip-version-check .

FROM python:3.12-slim
# a fixed, unprivileged user: the gateway needs no root, and secrets mounted for it stay readable by it alone
RUN useradd --system --no-log-init --uid 10001 --no-create-home --shell /usr/sbin/nologin gateway
COPY --from=build /venv /venv
WORKDIR /app
COPY config.yaml ./
COPY routes ./routes
ENV PATH=/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    GATEWAY_CONFIG=/app/config.yaml \
    PORT=8080
USER 10001:10001
EXPOSE 8080
# no curl in a slim image: Python asks /healthz on whatever $PORT the container was given
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PORT', '8080'), timeout=2)"]
# exec form: the gateway is PID 1 and gets SIGTERM itself, drains for server.shutdown_grace, exits 0
STOPSIGNAL SIGTERM
CMD ["gateway", "serve"]
