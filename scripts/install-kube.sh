#!/usr/bin/env bash
# Build a container-free Kubernetes control plane for the operator's integration
# tests: etcd, kube-apiserver, kube-controller-manager, kubectl (and helm) are
# compiled from source fetched through the Go module proxy into
# ~/.cache/daskrs/bin. Idempotent: a binary whose .NAME.version marker matches
# the pinned version is skipped. The first run takes a long while on 2 cores.
#
#   scripts/install-kube.sh            # everything
#   INSTALL_HELM=0 scripts/install-kube.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}   # k8s-openapi 0.29 covers 1.33-1.37
ETCD_VERSION=${ETCD_VERSION:-v3.6.4}  # the etcd that Kubernetes 1.34 ships with
HELM_VERSION=${HELM_VERSION:-v3.22.0}
CERT_MANAGER_VERSION=${CERT_MANAGER_VERSION:-v1.21.2}
INSTALL_HELM=${INSTALL_HELM:-1}
CACHE=${DASKRS_CACHE:-$HOME/.cache/daskrs}
BIN=$CACHE/bin
SRC=$CACHE/src
BUILD_REV=1   # bump to force rebuilds when the build recipe changes

# The staging modules that k8s.io/kubernetes requires as v0.0.0 (resolved by
# `replace => ./staging/...` in its own go.mod) and that the three commands
# need. Found by trial: the rest (cli-runtime, kms, ...) are pulled in at the
# right version by the staging modules' own go.mod files.
STAGING="api apiextensions-apiserver apimachinery apiserver client-go
  cloud-provider cluster-bootstrap component-base component-helpers
  controller-manager cri-api cri-client csi-translation-lib
  dynamic-resource-allocation endpointslice externaljwt kube-aggregator
  kube-controller-manager kube-scheduler kubectl kubelet metrics mount-utils
  pod-security-admission"

log() { echo "install-kube: $*" >&2; }
current() { [[ -x $BIN/$1 && "$(cat "$BIN/.$1.version" 2>/dev/null)" == "$2" ]]; }
mark() { echo "$2" >"$BIN/.$1.version"; }

mkdir -p "$BIN" "$SRC"
exec 9>"$CACHE/.install.lock"; flock 9   # concurrent callers wait for one build
# Static binaries, as upstream builds them (and no C compiler needed).
export GOFLAGS=-mod=mod CGO_ENABLED=0 GOTOOLCHAIN=${GOTOOLCHAIN:-auto}
command -v go >/dev/null || { log "go is not installed"; exit 1; }

# A throwaway module in $SRC/$1 requiring the module @ version, with the given
# packages recorded as tools (go >= 1.24) so `go build` can name them.
throwaway_module() { # dir module@version replace-args... -- packages...
  local dir=$SRC/$1 req=$2; shift 2
  rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
  go mod init "daskrs.local/$(basename "$dir")" >/dev/null 2>&1
  while [[ $1 != -- ]]; do go mod edit -replace="$1"; shift; done; shift
  go mod edit -require="$req"
  go get -tool "${@/%/@${req#*@}}" >&2
}

k8s_tag="$K8S_VERSION rev$BUILD_REV"
if ! current kube-apiserver "$k8s_tag" || ! current kube-controller-manager "$k8s_tag" \
   || ! current kubectl "$k8s_tag"; then
  log "building kube-apiserver, kube-controller-manager, kubectl $K8S_VERSION (slow the first time)"
  start=$SECONDS
  staging_v=v0.${K8S_VERSION#v1.}
  repl=(); for m in $STAGING; do repl+=("k8s.io/$m=k8s.io/$m@$staging_v"); done
  pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
        k8s.io/kubernetes/cmd/kubectl)
  throwaway_module "kubernetes-$K8S_VERSION" "k8s.io/kubernetes@$K8S_VERSION" "${repl[@]}" -- "${pkgs[@]}"
  # Without these, --version and the apiserver's /version say v0.0.0-master,
  # which trips client version checks (kubectl skew, helm chart kubeVersion).
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  done
  go build -trimpath -ldflags="$ld" -o "$BIN/" "${pkgs[@]}"
  for b in kube-apiserver kube-controller-manager kubectl; do mark $b "$k8s_tag"; done
  log "kubernetes binaries built in $((SECONDS - start)) s"
fi

if ! current etcd "$ETCD_VERSION rev$BUILD_REV"; then
  # go.etcd.io/etcd/server/v3 is the etcd main package; `go install` refuses it
  # (its go.mod replaces api/client/pkg with ../ paths), but as a dependency its
  # plain requirements (all at the same version) are used and no replace is needed.
  log "building etcd $ETCD_VERSION"
  start=$SECONDS
  throwaway_module "etcd-$ETCD_VERSION" "go.etcd.io/etcd/server/v3@$ETCD_VERSION" -- go.etcd.io/etcd/server/v3
  go build -trimpath -ldflags="-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  mark etcd "$ETCD_VERSION rev$BUILD_REV"
  log "etcd built in $((SECONDS - start)) s"
fi

if [[ $INSTALL_HELM == 1 ]] && ! current helm "$HELM_VERSION rev$BUILD_REV"; then
  log "building helm $HELM_VERSION"
  start=$SECONDS
  # As helm's Makefile does; offline `helm template` assumes our cluster's version.
  minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
  ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  for p in pkg/chartutil pkg/lint/rules; do
    ld+=" -X helm.sh/helm/v3/$p.k8sVersionMajor=1 -X helm.sh/helm/v3/$p.k8sVersionMinor=$minor"
  done
  # pkg@version builds need no module of ours (helm's go.mod has no replaces).
  GOFLAGS='' GOBIN=$BIN go install -trimpath -ldflags="$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mark helm "$HELM_VERSION rev$BUILD_REV"
  log "helm built in $((SECONDS - start)) s"
fi

# cert-manager's Certificate CRD, which the operator's tests of
# spec.tls.issuerRef install, from cert-manager's module on the proxy.
if [[ ! -s $BIN/cert-manager.io_certificates.yaml ]] \
   || [[ "$(cat "$BIN/.cert-manager-crds.version" 2>/dev/null)" != "$CERT_MANAGER_VERSION" ]]; then
  log "fetching cert-manager $CERT_MANAGER_VERSION's Certificate CRD"
  dir=$(cd "$SRC" && GOFLAGS='' go mod download -json "github.com/cert-manager/cert-manager@$CERT_MANAGER_VERSION" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  install -m 644 "$dir/deploy/crds/cert-manager.io_certificates.yaml" "$BIN/"
  echo "$CERT_MANAGER_VERSION" >"$BIN/.cert-manager-crds.version"
fi

log "up to date in $BIN: kube $K8S_VERSION, etcd $ETCD_VERSION$([[ $INSTALL_HELM == 1 ]] && echo ", helm $HELM_VERSION")"
