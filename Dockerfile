# syntax=docker/dockerfile:1.7
#
# Images of daskrs, built from this workspace:
#
#   docker build --target runtime       -t daskrs:dev .           # scheduler, worker and CLI
#   docker build --target python-worker -t daskrs-python:dev .    # worker that also runs Python tasks
#   docker build --target operator      -t daskrs-operator:dev .  # the Kubernetes operator
#
# Build arguments:
#   RUST_VERSION        Rust toolchain of the builder (default 1.95)
#   DEBIAN_RELEASE      Debian release of the builder and the Python images (bookworm; distroless: debian12)
#   PYTHON_VERSION      CPython of the python-worker image and of the wheel built for it (default 3.12)
#   CARGO_CHEF_VERSION  cargo-chef, which builds the dependencies in their own cached layer
#   CARGO_PROFILE       cargo profile of the binaries and the wheel (default release)
#   VERSION, REVISION, CREATED  OCI labels: version, source commit, build time (RFC 3339)
#
# The runtime and operator images hold one binary each on distroless/cc
# (glibc, CA certificates, no shell, no package manager); the python-worker
# image holds the runtime's binary on the official slim CPython image, with
# the daskrs package and the libraries Dask tasks use. All run as uid 65532,
# the unprivileged user the operator's pods expect (`runAsUser: 65532`).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm
ARG PYTHON_VERSION=3.12
ARG CARGO_PROFILE=release
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS chef
ARG CARGO_CHEF_VERSION=0.1.77
RUN cargo install --locked cargo-chef --version "${CARGO_CHEF_VERSION}"
WORKDIR /src

# The recipe lists the workspace's manifests and lock file only, so the
# dependency layer below is rebuilt when they change, not on every edit.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
ARG CARGO_PROFILE
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --locked --profile "${CARGO_PROFILE}" --recipe-path recipe.json \
      -p daskrs-client -p daskrs-operator
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo build --locked --profile "${CARGO_PROFILE}" -p daskrs-client -p daskrs-operator --bins \
 && dir="target/$([ "${CARGO_PROFILE}" = dev ] && echo debug || echo "${CARGO_PROFILE}")" \
 && mkdir -p /out \
 && cp "$dir/daskrs" "$dir/daskrs-operator" /out/ \
 && strip /out/daskrs /out/daskrs-operator

# The daskrs Python package as a wheel, built by maturin from python/ with
# the builder's Rust toolchain, under the CPython of the python-worker image
# (the full image of that version: it has the C toolchain Rust links with,
# as the rust image has).
FROM python:${PYTHON_VERSION}-${DEBIAN_RELEASE} AS python-wheel
ARG CARGO_PROFILE
ENV RUSTUP_HOME=/usr/local/rustup \
    CARGO_HOME=/usr/local/cargo \
    PATH=/usr/local/cargo/bin:$PATH
COPY --from=chef /usr/local/rustup /usr/local/rustup
COPY --from=chef /usr/local/cargo /usr/local/cargo
WORKDIR /src
# maturin as python/requirements/newest.txt pins it. pip refuses extras in
# a constraints file, so they are cut from the pins first.
RUN --mount=type=bind,source=python/requirements/newest.txt,target=/tmp/newest.txt \
    sed 's/\[[^]]*\]//' /tmp/newest.txt > /tmp/constraints.txt \
 && python3 -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      -c /tmp/constraints.txt maturin \
 && rm /tmp/constraints.txt
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    cargo chef cook --locked --profile "${CARGO_PROFILE}" --recipe-path recipe.json -p daskrs-python
COPY . .
# One abi3 wheel (CPython 3.10 and later), in /wheels.
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    maturin build --locked --profile "${CARGO_PROFILE}" --manifest-path python/Cargo.toml \
      --interpreter python3 --out /wheels

FROM gcr.io/distroless/cc-debian12:nonroot AS base
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.source="https://github.com/daskrs/daskrs" \
      org.opencontainers.image.url="https://github.com/daskrs/daskrs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="daskrs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}"
USER 65532:65532

FROM base AS operator
LABEL org.opencontainers.image.title="daskrs-operator" \
      org.opencontainers.image.description="Reconciles DaskCluster resources into daskrs scheduler and worker pods"
COPY --from=builder /out/daskrs-operator /usr/local/bin/daskrs-operator
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/daskrs-operator"]

# Workers that run Python tasks as well as SQL: the runtime's `daskrs`
# binary on the official slim CPython image, with the daskrs package, numpy,
# pandas, pyarrow, dask, cloudpickle and s3fs at the versions
# python/requirements/newest.txt pins. The operator's worker pods run it
# unless the DaskCluster names an image (`--worker-image`, the chart's
# `workerImage`); schedulers run the runtime image. `daskrs worker` runs
# Python tasks with $DASKRS_PYTHON, the interpreter these are installed in.
#
# A base for your own worker image, with the libraries your tasks import:
#
#   FROM ghcr.io/daskrs/daskrs-python:<tag>
#   USER root
#   RUN pip install --no-cache-dir my-libs
#   USER 65532:65532
#
# (switch back to uid 65532 if you switch to root, as here), then name it in
# the DaskCluster's `spec.image`. Notebooks that submit tasks should have the
# same Python, dask, numpy, pandas and cloudpickle versions: tasks and
# results travel pickled.
FROM python:${PYTHON_VERSION}-slim-${DEBIAN_RELEASE} AS python-worker
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.source="https://github.com/daskrs/daskrs" \
      org.opencontainers.image.url="https://github.com/daskrs/daskrs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="daskrs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.title="daskrs-python" \
      org.opencontainers.image.description="daskrs worker, scheduler and client with CPython, Dask and the daskrs package: Python tasks and distributed SQL over S3"
# The pods' user, with a home directory: Python libraries look for their
# settings and caches under ~.
RUN groupadd --gid 65532 daskrs \
 && useradd --uid 65532 --gid 65532 --no-log-init --create-home --home-dir /home/daskrs \
      --shell /usr/sbin/nologin daskrs \
 && install -d -o 65532 -g 65532 /var/lib/daskrs
ENV DASKRS_PYTHON=/usr/local/bin/python3
# Pods mount the root filesystem read-only, with /tmp and /var/lib/daskrs
# writable: libraries' caches (numba, fsspec, matplotlib) go to /tmp.
ENV XDG_CACHE_HOME=/tmp/.cache
# Wheels only: the slim image has no compiler. The import checks that the
# package and the libraries load together.
RUN --mount=type=bind,source=python/requirements/newest.txt,target=/tmp/newest.txt \
    --mount=type=bind,from=python-wheel,source=/wheels,target=/tmp/wheels \
    sed 's/\[[^]]*\]//' /tmp/newest.txt > /tmp/constraints.txt \
 && "$DASKRS_PYTHON" -m pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --only-binary=:all: -c /tmp/constraints.txt \
      /tmp/wheels/daskrs-*.whl numpy pandas pyarrow "dask[array,dataframe]" cloudpickle s3fs \
 && rm /tmp/constraints.txt \
 && "$DASKRS_PYTHON" -c "import daskrs, dask.array, dask.dataframe, cloudpickle, pyarrow, s3fs"
COPY --from=builder /out/daskrs /usr/local/bin/daskrs
USER 65532:65532
WORKDIR /var/lib/daskrs
EXPOSE 8786 8787 8788
ENTRYPOINT ["/usr/local/bin/daskrs"]
CMD ["--help"]

# Last, so a plain `docker build .` makes the runtime image.
FROM base AS runtime
LABEL org.opencontainers.image.title="daskrs" \
      org.opencontainers.image.description="daskrs scheduler, worker and client: task graphs and distributed SQL over S3"
COPY --from=builder /out/daskrs /usr/local/bin/daskrs
WORKDIR /var/lib/daskrs
EXPOSE 8786 8787 8788
ENTRYPOINT ["/usr/local/bin/daskrs"]
CMD ["--help"]
