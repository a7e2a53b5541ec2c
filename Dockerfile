# syntax=docker/dockerfile:1
# atlasgate daemon image (Kubernetes DaemonSet: deploy/kubernetes/).
#
#   podman build -t atlasgate:0.1.0 .            from source (12 min on 2 cores)
#   scripts/image                                the same, tagged from `atlasgate version`
#   scripts/image --binary build/atlasgate       an already-built binary (seconds; CI)
#
# Two ways to get the binary:
#   from source (the default, last stage): stage `build` compiles it on
#           Debian 12 (BPF objects, skeletons, the C++ binary) with the
#           packages scripts/install-deps installs; the context is the
#           repository (.dockerignore keeps it to the sources).
#   --target prebuilt: the files `atlasgate` and `version` of the build
#           context. scripts/image --binary PATH makes a context holding only
#           a stripped copy of PATH and its `atlasgate version`; the binary
#           must be built on Debian 12 against the same libraries
#           (scripts/install-deps). Stage `build` is then skipped.
# Both end in the same layers of stage `runtime-base`, so a CI rebuild with a
# new binary reuses them (and the apt layer of `collect`) from the cache.
#
# No apt runs in the image's own stages. Stage `collect` (debian:12-slim)
# installs the runtime libraries with apt, removes apt's caches itself
# (downloaded .debs, package lists, pkgcache: it must not rely on a base
# image's docker-clean hook), and gathers into /rootfs only what those
# packages add to the slim base: their files under /usr/lib (libraries,
# OpenSSL's modules and /usr/lib/ssl links; not docs, not the openssl
# program), the CA certificates (/etc/ssl/certs, /usr/share/ca-certificates)
# and /etc/ssl/openssl.cnf, and the list of those packages with versions
# (/usr/share/atlasgate/runtime-packages). `runtime-base` is debian:12-slim
# plus one COPY of /rootfs: about 12 MB above debian:12-slim, with the binary
# (tests/integration/test_image.py checks a budget of 25 MB). Each final
# stage runs the binary once (exec form, no shell): a library it lacks fails
# the build, not a node. The shell and coreutils of the slim base stay: the
# DaemonSet's publish-ca container runs /bin/sh with cp, cmp and mv.
# The BPF programs are embedded in the binary (libbpf skeletons) and use CO-RE,
# so one image runs on any node kernel with BTF (5.14+; see README).
#
# CI: tests/deploy/validate.sh checks this file (stages, bases, apt hygiene,
# runtime libraries); tests/integration/test_image.py builds it with podman
# (scripts/image --binary, on a debian:12-slim made with mmdebstrap when none
# is present) and runs the daemon container with the DaemonSet's privileges
# and mounts against agent containers.

FROM debian:12 AS build
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      clang llvm libbpf-dev bpftool libelf-dev zlib1g-dev \
      libboost1.81-dev libboost-json1.81-dev libboost-url1.81-dev \
      libyaml-cpp-dev libfmt-dev libcli11-dev libssl-dev libsqlite3-dev libbson-dev \
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
 && /build/atlasgate version | awk '{ print $NF }' > /build/version \
 && cat /build/version

FROM debian:12-slim AS collect
ARG DEBIAN_FRONTEND=noninteractive
RUN dpkg-query -W -f '${Package}\n' | sort > /base-packages \
 && apt-get update \
 && apt-get install -y --no-install-recommends \
      libbpf1 libelf1 libssl3 libyaml-cpp0.7 libfmt9 libsqlite3-0 libbson-1.0-0 \
      libboost-json1.81.0 libboost-url1.81.0 ca-certificates \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/cache/apt/archives/*.deb \
      /var/cache/debconf/*-old /var/lib/dpkg/*-old /var/log/apt /var/log/dpkg.log
RUN set -eu; \
    mkdir -p /rootfs; \
    added=$(dpkg-query -W -f '${Package}\n' | sort | comm -13 /base-packages -); \
    for p in $added; do \
      dpkg-query -L "$p" | grep -E '^/usr/lib/' | grep -v '^/usr/lib/ssl/misc' | while read -r f; do \
        if [ -f "$f" ] || [ -L "$f" ]; then cp -a --parents "$f" /rootfs/; fi; \
      done; \
    done; \
    cp -a --parents /etc/ssl/certs /etc/ssl/openssl.cnf /usr/share/ca-certificates /rootfs/; \
    mkdir -p /rootfs/usr/share/atlasgate; \
    dpkg-query -W -f '${Package} ${Version}\n' $added > /rootfs/usr/share/atlasgate/runtime-packages; \
    cat /rootfs/usr/share/atlasgate/runtime-packages; \
    du -sh /rootfs

FROM debian:12-slim AS runtime-base
COPY --from=collect /rootfs/ /
# ld.so.cache for the copied libraries.
RUN ["/sbin/ldconfig"]
LABEL org.opencontainers.image.title="atlasgate" \
      org.opencontainers.image.description="Kernel-redirected credential-injecting gateway for the MongoDB Atlas Administration API"
# Root is required: BPF, cgroups and setns (the DaemonSet runs it privileged).
ENTRYPOINT ["/usr/local/bin/atlasgate"]
CMD ["daemon", "--config", "/etc/atlasgate/atlasgate.yaml"]

# --target prebuilt: the binary and its version from the build context.
FROM runtime-base AS prebuilt
COPY --chmod=0755 atlasgate /usr/local/bin/atlasgate
COPY --chmod=0644 version /usr/share/atlasgate/version
RUN ["/usr/local/bin/atlasgate", "version"]

# The default: the binary of the build stage.
FROM runtime-base
COPY --from=build /build/atlasgate /usr/local/bin/atlasgate
COPY --from=build /build/version /usr/share/atlasgate/version
RUN ["/usr/local/bin/atlasgate", "version"]
