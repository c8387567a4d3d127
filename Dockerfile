# syntax=docker/dockerfile:1
#
# foodpipe as one static musl binary, in an image that holds nothing else.
#
#   docker build -t foodpipe .
#   docker buildx build --platform linux/amd64,linux/arm64 -t foodpipe .
#   docker run --rm foodpipe --version
#
# The build stage runs on the builder's own platform and cross-compiles to
# the musl triple of the target platform: rustup ships musl's libc.a for
# the target and rust-lld links (.cargo/config.toml), so no C compiler is
# installed for either architecture, and CC=false fails the build if any
# crate tries to compile C.
#
# The final stage is FROM scratch: no shell, no libc, no CA bundle, just
# the binary. musl's resolver reads the /etc/hosts and /etc/resolv.conf the
# container runtime mounts, so service names (kafka, postgres) resolve.

ARG RUST_VERSION=1.95

FROM --platform=$BUILDPLATFORM rust:${RUST_VERSION}-slim-bookworm AS build
# Set by buildx/BuildKit from --platform: amd64 or arm64.
ARG TARGETARCH
# .git is not in the build context; pass the commit for `--version`:
#   docker build --build-arg FOODPIPE_GIT_COMMIT=$(git rev-parse --short=12 HEAD) .
ARG FOODPIPE_GIT_COMMIT=unknown
WORKDIR /src
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN case "$TARGETARCH" in \
        amd64) echo x86_64-unknown-linux-musl ;; \
        arm64) echo aarch64-unknown-linux-musl ;; \
        *) echo "foodpipe builds for amd64 and arm64, not $TARGETARCH" >&2; exit 1 ;; \
    esac > /rust-target \
    && rustup target add "$(cat /rust-target)"
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CC=false CXX=false FOODPIPE_GIT_COMMIT="$FOODPIPE_GIT_COMMIT" \
    cargo build --release --locked --bin foodpipe --target "$(cat /rust-target)" \
    && cp "target/$(cat /rust-target)/release/foodpipe" /foodpipe

FROM scratch
COPY --from=build /foodpipe /foodpipe
# No /etc/passwd in scratch: a numeric user (nobody) is enough.
USER 65534:65534
# The consumer's /metrics and /healthz, when run with
# FOODPIPE_METRICS_ADDR=0.0.0.0:9898.
EXPOSE 9898
ENTRYPOINT ["/foodpipe"]
CMD ["--help"]
