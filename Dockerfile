# Skyform in a container: `docker run skyform validate /repo`, later `skyform reconcile`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    SKYFORM_HOME=/var/lib/skyform
RUN apt-get update \
 && apt-get install -y --no-install-recommends git openssh-client \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/skyform skyform

WORKDIR /src
COPY pyproject.toml README.md ./
COPY schema ./schema
COPY planner ./planner
COPY state ./state
COPY applier ./applier
COPY reconciler ./reconciler
RUN pip install . && rm -rf /src

USER skyform
WORKDIR /var/lib/skyform
ENTRYPOINT ["skyform"]
CMD ["--help"]
