# Skyform in a container. By default it runs the reconcile daemon (`skyform reconcile`, with
# SKYFORM_REPO or --repo); any other command works too: `docker run IMAGE plan /repo`.
# EXTRAS picks the cloud SDKs baked in (all, kubernetes, aws, gcp; "" for none).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SKYFORM_HOME=/var/lib/skyform
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client gnupg tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home --home-dir /var/lib/skyform skyform

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schema ./schema
COPY planner ./planner
COPY state ./state
COPY applier ./applier
COPY reconciler ./reconciler
ARG EXTRAS=all
RUN pip install ".${EXTRAS:+[$EXTRAS]}" && rm -rf /src

USER 10001
WORKDIR /var/lib/skyform
# 8080: webhook, /healthz, /readyz, /metrics, /api/status and the status page.
EXPOSE 8080
# tini reaps the detached job/service controllers the daemon starts and forwards SIGTERM, so
# the daemon finishes its sync and hands leadership over on a rolling update.
ENTRYPOINT ["tini", "--", "skyform"]
CMD ["reconcile", "--listen", "0.0.0.0:8080"]
