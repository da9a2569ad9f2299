# syntax=docker/dockerfile:1.7
# The tributary image: `docker build -t tributary .` then `docker run tributary serve`.
# Stage 1 plans the dependency build (cargo-chef), stage 2 builds the locked dependencies in a layer
# of their own (rebuilt only when Cargo.lock or a manifest changes), then Tributary; the runtime is a
# slim Debian with the binary, a non-root user and a health check on /livez.

FROM rust:1.95-slim-bookworm AS chef
# librdkafka is built from source by rdkafka-sys (./configure + make, zlib): a C toolchain.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config zlib1g-dev python3 \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install --locked cargo-chef --version 0.1.73
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN cargo chef cook --release --locked --recipe-path recipe.json --bin tributary
COPY . .
RUN cargo build --release --locked --bin tributary \
 && install -m 0755 target/release/tributary /usr/local/bin/tributary

FROM debian:bookworm-slim AS runtime
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /var/lib/tributary --create-home tributary
COPY --from=builder /usr/local/bin/tributary /usr/local/bin/tributary
USER tributary
WORKDIR /var/lib/tributary
# Every key of the configuration can come from TRIBUTARY_<SECTION>__<KEY> variables; these make the
# listeners reachable from outside the container. Non-loopback listeners need [auth] (tokens), or
# TRIBUTARY_AUTH__ALLOW_UNAUTHENTICATED=true for a trusted network (the local compose stack).
ENV TRIBUTARY_SERVING__LISTEN=0.0.0.0:8080 \
    TRIBUTARY_SERVING__PG_LISTEN=0.0.0.0:5433 \
    TRIBUTARY_LAKE__URL=/var/lib/tributary/lake
EXPOSE 8080 5433
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
  CMD curl -fsS http://127.0.0.1:8080/livez || exit 1
ENTRYPOINT ["tributary"]
CMD ["serve"]
