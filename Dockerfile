# The Diploi platform image for Kubernetes: one image, four processes (the Helm chart picks the command):
#   web      daphne -b 0.0.0.0 -p 8000 diploi.asgi:application   (the default)
#   worker   celery -A diploi worker
#   monitor  python manage.py monitor
#   ssh      python manage.py sshgateway --host 0.0.0.0
#
# Helm renders the Kubernetes objects of packages that bring a chart (.diploi/helm/); built from source
# in a stage of its own (the version scripts/k8s-testenv tests with), so that the image needs no Go.
FROM golang:1.25-bookworm AS helm
ARG HELM_VERSION=3.22.0
RUN CGO_ENABLED=0 GOBIN=/out go install "helm.sh/helm/v3/cmd/helm@v${HELM_VERSION}"

FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    PATH="/app/.venv/bin:$PATH" \
    DIPLOI_DATA_DIR=/data \
    DIPLOI_RUNTIME=kubernetes

RUN apt-get update \
    && apt-get install -y --no-install-recommends git openssh-client \
    && rm -rf /var/lib/apt/lists/* \
    && pip install --no-cache-dir uv \
    && useradd --create-home --uid 10001 diploi \
    && mkdir /data && chown diploi /data

COPY --from=helm /out/helm /usr/local/bin/helm
WORKDIR /app
COPY pyproject.toml uv.lock ./
RUN uv sync --frozen --no-dev --no-install-project
COPY --chown=diploi . .
# Static files are served by WhiteNoise from the image; the key here exists only for this step.
RUN DIPLOI_SECRET_KEY=collectstatic-only python manage.py collectstatic --noinput --verbosity 0 && chown -R diploi /data

USER diploi
EXPOSE 8000 2222
CMD ["daphne", "-b", "0.0.0.0", "-p", "8000", "diploi.asgi:application"]
