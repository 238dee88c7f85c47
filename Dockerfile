# syntax=docker/dockerfile:1
#
# The gateway image: `make image` (docker build -t gateway:dev .).
# Build stage: the Rust toolchain builds the release binary.
# Runtime stage: distroless `cc` (glibc, libgcc_s, CA certificates; no shell,
# no package manager), running as the non-root user 65532.
# `make image-check` tests the binary this file copies (config check and that
# its shared libraries are ones the runtime image has).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM docker.io/library/rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS build
WORKDIR /src
COPY . .
# jemalloc (tikv-jemallocator) is built from C with the image's make and gcc.
# The release profile keeps line tables (debug = 1) for local profiling; the
# image drops them (66 MB -> 9 MB) and keeps the symbols for backtraces.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway --bin gateway \
    && mkdir -p /out \
    && objcopy --strip-debug target/release/gateway /out/gateway

FROM gcr.io/distroless/cc-debian12:nonroot AS runtime
COPY --from=build /out/gateway /usr/local/bin/gateway
COPY config/example.toml /etc/gateway/gateway.toml
# Listen on every interface inside the container (the example file says
# 127.0.0.1); PORT still moves the port. Mount another file over
# /etc/gateway/gateway.toml, or set GATEWAY_CONFIG, for a real deployment.
ENV GATEWAY_CONFIG=/etc/gateway/gateway.toml \
    GATEWAY_LISTEN=0.0.0.0:4000
EXPOSE 4000
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/gateway"]
