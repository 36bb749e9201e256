# syntax=docker/dockerfile:1.7
#
# Images of daskrs, built from this workspace:
#
#   docker build --target runtime  -t daskrs:dev .           # scheduler, worker and CLI
#   docker build --target operator -t daskrs-operator:dev .  # the Kubernetes operator
#
# Build arguments:
#   RUST_VERSION        Rust toolchain of the builder (default 1.95)
#   DEBIAN_RELEASE      Debian release of the builder and of the distroless base (bookworm / debian12)
#   CARGO_CHEF_VERSION  cargo-chef, which builds the dependencies in their own cached layer
#   CARGO_PROFILE       cargo profile of the binaries (default release)
#   VERSION, REVISION, CREATED  OCI labels: version, source commit, build time (RFC 3339)
#
# The final images hold one binary each on distroless/cc (glibc, CA
# certificates, no shell, no package manager) and run as uid 65532, the
# unprivileged user the operator's pods expect (`runAsUser: 65532`).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

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
ARG CARGO_PROFILE=release
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

FROM gcr.io/distroless/cc-debian12:nonroot AS base
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
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

# Last, so a plain `docker build .` makes the runtime image.
FROM base AS runtime
LABEL org.opencontainers.image.title="daskrs" \
      org.opencontainers.image.description="daskrs scheduler, worker and client: task graphs and distributed SQL over S3"
COPY --from=builder /out/daskrs /usr/local/bin/daskrs
WORKDIR /var/lib/daskrs
EXPOSE 8786 8787 8788
ENTRYPOINT ["/usr/local/bin/daskrs"]
CMD ["--help"]
