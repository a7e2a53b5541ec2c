# syntax=docker/dockerfile:1
# atlasgate daemon image (Kubernetes DaemonSet: deploy/kubernetes/).
#
#   docker build -t atlasgate:0.1.0 .
#
# Stage 1 builds the daemon (BPF objects, skeletons and the C++ binary) on
# Debian 12 with the same packages scripts/install-deps installs; stage 2 is
# Debian 12 slim with only the shared libraries the binary links against.
# The runtime stage removes apt's caches itself (downloaded .debs, package
# lists, pkgcache): it must not rely on a base image's docker-clean hook.
# The BPF programs are embedded in the binary (libbpf skeletons) and use CO-RE,
# so one image runs on any node kernel with BTF (5.14+; see README).
#
# CI checks this file with tests/deploy/validate.sh (stages, bases, apt
# hygiene including the runtime stage's own cache cleanup, runtime libraries)
# but does not build the image: podman runs in CI for the container tests
# (tests/integration/test_containers.py), and building the image there is
# still to come.

FROM debian:12 AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev \
      libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev \
      libyaml-cpp-dev libfmt-dev libcli11-dev libssl-dev \
      cmake ninja-build pkg-config g++ make ca-certificates \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY cmake/ cmake/
COPY bpf/ bpf/
COPY vmlinux/ vmlinux/
COPY userspace/ userspace/
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DATLASGATE_TESTS=OFF \
 && ninja -C /build atlasgate \
 && strip --strip-unneeded /build/atlasgate \
 && /build/atlasgate version

FROM debian:12-slim
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      libbpf1 libelf1 libssl3 libyaml-cpp0.7 libfmt9 \
      libboost-json1.81.0 libboost-url1.81.0 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
      /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/apt /var/log/dpkg.log
COPY --from=build /build/atlasgate /usr/local/bin/atlasgate
LABEL org.opencontainers.image.title="atlasgate" \
      org.opencontainers.image.description="Kernel-redirected credential-injecting gateway for the MongoDB Atlas Administration API"
# Root is required: BPF, cgroups and setns (the DaemonSet runs it privileged).
ENTRYPOINT ["/usr/local/bin/atlasgate"]
CMD ["daemon", "--config", "/etc/atlasgate/atlasgate.yaml"]
