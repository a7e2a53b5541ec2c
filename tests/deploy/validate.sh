#!/usr/bin/env bash
# validate.sh — validate deploy/kubernetes/ and the Dockerfile without a cluster
# or a container engine (ctest: deploy_manifests_validate).
#
#   tests/deploy/validate.sh [--atlasgate PATH]
#
# Schema-aware and offline once installed: the Kubernetes OpenAPI schemas come
# from the npm package kubernetes-models (ajv-compiled validators), unknown
# fields are caught against the API types of kubernetes-types with the
# TypeScript checker; versions pinned in tests/deploy/package.json and
# package-lock.json, installed with `npm ci --prefix tests/deploy` on first use
# (node and npm come from scripts/install-deps). No validator is packaged by
# Debian 12 (no kubeconform, kubeval or hadolint), hence npm.
# The ConfigMap's embedded atlasgate.yaml goes through `atlasgate check`
# (--atlasgate, default build/atlasgate); the Dockerfile gets project lint
# rules (hadolint is not in Debian): stages and bases, apt hygiene, no apt and
# no shell in the runtime stage, both ways to get the binary (the image itself
# is built and run by tests/integration/test_image.py). `kubectl kustomize`
# also runs when kubectl happens to be installed (it is optional).
#
# Exit 0 all passed, 1 a check failed, 77 skipped (node/npm missing or the
# packages cannot be installed, outside CI).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
atlasgate=$root/build/atlasgate
while (($#)); do
    case $1 in
        --atlasgate) atlasgate=$2; shift 2 ;;
        -h | --help) sed -n '2,22s/^# \{0,1\}//p' "$0"; exit 0 ;;
        *) echo "validate.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

skip() {
    if [[ -n ${CI:-} ]]; then
        echo "validate.sh: $1 (a failure under CI)" >&2
        exit 1
    fi
    echo "SKIP: $1"
    exit 77
}

command -v node >/dev/null || skip "node not found (scripts/install-deps installs nodejs)"
command -v npm >/dev/null || skip "npm not found (scripts/install-deps installs npm)"

# Install the pinned validator packages when missing or out of date.
stamp=$here/node_modules/.package-lock.json
if [[ ! -f $stamp || $here/package-lock.json -nt $stamp ]]; then
    echo "validate.sh: npm ci --prefix tests/deploy" >&2
    if ! npm ci --prefix "$here" --no-audit --no-fund --loglevel=error >&2; then
        skip "cannot install the validator packages (npm ci failed; offline?)"
    fi
fi

[[ -x $atlasgate ]] || { echo "validate.sh: $atlasgate is not an executable (build the atlasgate target, or pass --atlasgate)" >&2; exit 1; }

status=0
node "$here/validate.mjs" --root "$root" --atlasgate "$atlasgate" || status=$?

# The validator itself: seeded mistakes in a scratch copy must each be caught.
selftest() {
    local tmp out
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/ag-deploy-selftest.XXXXXX")
    trap 'rm -rf "$tmp"' RETURN
    mkdir -p "$tmp/deploy"
    cp -r "$root/deploy/kubernetes" "$tmp/deploy/"
    cp "$root/Dockerfile" "$root/.dockerignore" "$tmp/"
    local k=$tmp/deploy/kubernetes
    sed -i 's/mountPropagation: Bidirectional/mountPropogation: Bidirectional/' "$k/daemonset.yaml"
    sed -i '0,/imagePullPolicy: IfNotPresent/s//imagePullPolicy: Sometimes/' "$k/daemonset.yaml"
    sed -i 's/verbs: \["get", "list", "watch"\]/verbs: ["get", "list", "watch", "delete"]/' "$k/clusterrole.yaml"
    sed -i 's|rate: 60/minute|rate: 60/fortnight|' "$k/configmap.yaml"
    sed -i 's/^FROM debian:12-slim/FROM debian:latest/' "$tmp/Dockerfile"
    # apt in the runtime stage (the last one): the image would carry apt's state.
    echo 'RUN apt-get update && apt-get install -y --no-install-recommends curl && rm -rf /var/lib/apt/lists/*' >>"$tmp/Dockerfile"
    out=$(node "$here/validate.mjs" --root "$tmp" --atlasgate "$atlasgate" 2>&1) && {
        echo "FAIL validator self-test: a broken copy passed"; return 1; }
    local want missing=0
    for want in "mountPropogation: unknown field (did you mean mountPropagation?)" \
                "imagePullPolicy: must be equal to one of the allowed values" \
                'verbs ["get","list","watch","delete"]' \
                'configmap.yaml:' 'unknown rate unit "fortnight"' \
                "the runtime stage must be debian:12-slim" \
                "runtime stage must not run apt or dpkg"; do
        if ! grep -qF -- "$want" <<<"$out"; then
            echo "FAIL validator self-test: not caught: $want"
            missing=1
        fi
    done
    ((missing == 0)) && echo "ok   validator self-test (seeded mistakes are caught)"
    return "$missing"
}
selftest || status=1

# Optional: kustomize build, when a kubectl is around (not a dependency).
if command -v kubectl >/dev/null; then
    if out=$(kubectl kustomize "$root/deploy/kubernetes" 2>&1); then
        echo "ok   kubectl kustomize deploy/kubernetes ($(grep -c '^kind:' <<<"$out") objects)"
    else
        echo "FAIL kubectl kustomize deploy/kubernetes"
        sed 's/^/     /' <<<"$out"
        status=1
    fi
fi
exit "$status"
