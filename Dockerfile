# syntax=docker/dockerfile:1
# The `onboard` binary in a small, non-root runtime image. One image runs every role: the
# compose file (or your orchestrator) picks the subcommand — serve, ingress, worker, dashboard,
# migrate, sandbox.
#
#   docker build -t onboard .
#   docker run --rm -e DATABASE_URL=… onboard migrate

ARG RUST_VERSION=1.94

# cargo-chef splits the build so the dependency layer is cached until Cargo.toml/Cargo.lock change.
FROM rust:${RUST_VERSION}-bookworm AS chef
RUN cargo install cargo-chef --locked
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# Dependencies only: this layer is reused as long as the recipe (the manifests) is unchanged.
RUN cargo chef cook --release --locked --package onboard --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --package onboard \
    && cp target/release/onboard /usr/local/bin/onboard

# glibc + CA certificates + tzdata, no shell, runs as uid 65532 (nonroot).
FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=builder /usr/local/bin/onboard /usr/local/bin/onboard
ENV ONBOARD_INGRESS_ADDR=0.0.0.0:8080 \
    ONBOARD_DASHBOARD_ADDR=0.0.0.0:8081 \
    ONBOARD_SANDBOX_ADDR=0.0.0.0:8089 \
    LOG_FORMAT=json
USER nonroot:nonroot
EXPOSE 8080 8081
# Every role serves /healthz on its internal listener (ONBOARD_DASHBOARD_ADDR).
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
    CMD ["/usr/local/bin/onboard", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/onboard"]
CMD ["serve"]
