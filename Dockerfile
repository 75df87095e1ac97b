# Aftercare image: one image for api, dispatcher, worker, beat and migrate (the command differs).
# Build stage: install the locked dependencies into a virtualenv.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY requirements.lock ./
RUN /opt/venv/bin/pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY aftercare ./aftercare
RUN /opt/venv/bin/pip install --no-deps .

# Final stage: no compilers or build tools, a non-root user, only what runs.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    AFTERCARE_DATA_DIR=/var/lib/aftercare \
    AFTERCARE_SCHEDULES_DIR=/app/schedules \
    AFTERCARE_TEMPLATES_DIR=/app/templates
RUN groupadd --system aftercare && useradd --system --gid aftercare --home /app aftercare \
    && mkdir -p /var/lib/aftercare && chown aftercare:aftercare /var/lib/aftercare
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY schedules ./schedules
COPY templates ./templates
USER aftercare
EXPOSE 8000
# --no-access-log: uvicorn's access line is the raw request target (a search's query string, an
# unsubscribe token); the app logs each request by its route instead (docs/security.md).
# --no-proxy-headers: X-Forwarded-For is believed only from AFTERCARE_TRUSTED_PROXIES.
CMD ["uvicorn", "--factory", "aftercare.web.server:create_served_app", "--no-access-log", "--host", "0.0.0.0", "--port", "8000", "--no-proxy-headers"]
