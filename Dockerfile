# The operator image: `aistack run` on a slim Python base, as a non-root user.
#
#   docker build -t ghcr.io/aistack-dev/aistack-operator:0.1.0 .
#
# The Helm chart's default image (charts/aistack-operator, image.repository and the
# chart's appVersion) is this build, tagged with the package version.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------- builder
# Builds the project's wheel and installs it with its dependencies into a virtualenv
# without pip. Every dependency ships binary wheels, so no compiler is needed here either.
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --wheel-dir /wheels . \
 && python -m venv --without-pip /opt/aistack \
 && python -m pip --python /opt/aistack/bin/python install --no-index --find-links /wheels \
      --no-compile aistack-operator

# ---------------------------------------------------------------- final
FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="aistack-operator" \
      org.opencontainers.image.description="Kubernetes operator: one AIStack resource, one license-checked open AI stack" \
      org.opencontainers.image.source="https://github.com/aistack-dev/aistack-operator" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}"
# A fixed numeric user (the chart's runAsUser) with a passwd entry, which kopf's peer
# identity needs outside a pod; no home, no login shell. The base image's own pip goes:
# nothing installs anything at run time.
RUN groupadd --system --gid 65532 aistack \
 && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin aistack \
 && python -m pip uninstall --yes --no-cache-dir pip setuptools wheel \
 && rm -rf /root/.cache
COPY --from=builder /opt/aistack /opt/aistack
# The root filesystem is read-only in the chart: nothing writes bytecode, the Hugging Face
# client caches under /tmp (an emptyDir there).
ENV PATH=/opt/aistack/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HOME=/tmp/huggingface
USER 65532:65532
# 9443: the license webhook (--webhook-port); 8080: liveness (--liveness).
EXPOSE 9443 8080
ENTRYPOINT ["aistack", "run"]
