# syntax=docker/dockerfile:1
# One image with both cluster binaries, for the Helm chart (helm/pushcast):
#   /usr/local/bin/pushcast-controller   REST + gRPC API, scheduler (leader-elected)
#   /usr/local/bin/pushcast-worker       RTMP ingest and push sessions
# Build: docker build -t pushcast/pushcast:0.1.0 .   (or buildah bud / podman build)
# The chart sets the command; without one the image runs the controller.

FROM docker.io/library/rust:1-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler libprotobuf-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target/ between builds (BuildKit, buildah, podman);
# the binaries are copied out of the cached target/ inside the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin pushcast-controller --bin pushcast-worker \
 && mkdir -p /out \
 && cp target/release/pushcast-controller target/release/pushcast-worker /out/

FROM docker.io/library/debian:bookworm-slim
# ca-certificates: rtmps:// destinations and TLS webhooks verify against the system roots.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 65532 pushcast \
 && useradd --uid 65532 --gid 65532 --no-create-home --home-dir /var/lib/pushcast --shell /usr/sbin/nologin pushcast \
 && install -d -o 65532 -g 65532 -m 0750 /var/lib/pushcast
COPY --from=build /out/pushcast-controller /out/pushcast-worker /usr/local/bin/
ENV PUSHCAST_DATA_DIR=/var/lib/pushcast \
    PUSHCAST_LOG_FORMAT=json
WORKDIR /var/lib/pushcast
USER 65532:65532
# REST, gRPC API (controller); RTMP ingest, WorkerService (worker)
EXPOSE 8081 9000 1935 9100
CMD ["/usr/local/bin/pushcast-controller"]
