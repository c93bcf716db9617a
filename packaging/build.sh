#!/usr/bin/env bash
# Build the hybrid-gateway .deb (cargo-deb) and .rpm (cargo-generate-rpm) in one command.
#
#   packaging/build.sh [--profile release|dev] [--target x86_64-unknown-linux-gnu|aarch64-unknown-linux-gnu]
#                      [--version X.Y.Z] [--no-build] [--binary PATH] [--out DIR]
#
#   --profile   cargo profile of the binary (default release; dev reuses a `cargo build` /
#               `cargo test` binary, stripped like the release one)
#   --target    Rust target triple (default: the host). A foreign target needs
#               `rustup target add TRIPLE` and a cross linker (aarch64: Debian
#               gcc-aarch64-linux-gnu); this script sets the linker variables.
#   --version   override the package version (default: Cargo.toml's); the tests use it to
#               build an upgrade
#   --no-build  package the binary that is already built
#   --binary    package this binary instead of cargo's output (implies --no-build)
#   --out       output directory (default: <cargo target dir>/packages)
#
# Output: <out>/hybrid-gateway_<version>-1_<arch>.deb and
# <out>/hybrid-gateway-<version>-1.<arch>.rpm, and the CycloneDX SBOM both packages ship as
# /usr/share/doc/hybrid-gateway/sbom.cdx.json also as <out>/hybrid-gateway-<version>.<arch>.cdx.json
# (packaging/sbom.py, from Cargo's resolution for the target); the last two lines printed are
# "deb: PATH" and "rpm: PATH". The package contents are declared in Cargo.toml
# ([package.metadata.deb], [package.metadata.generate-rpm]).
set -euo pipefail

die() { echo "build.sh: error: $*" >&2; exit 1; }
log() { echo "build.sh: $*" >&2; }

repo="$(cd "$(dirname "$0")/.." && pwd)"
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"

profile="${HGW_PROFILE:-release}"
target=""
version=""
build=1
out=""
binary=""
while (($#)); do
  case "$1" in
    --profile) profile="${2:?--profile needs a value}"; shift 2 ;;
    --profile=*) profile="${1#*=}"; shift ;;
    --target) target="${2:?--target needs a value}"; shift 2 ;;
    --target=*) target="${1#*=}"; shift ;;
    --version) version="${2:?--version needs a value}"; shift 2 ;;
    --version=*) version="${1#*=}"; shift ;;
    --no-build) build=0; shift ;;
    --binary) binary="${2:?--binary needs a path}"; build=0; shift 2 ;;
    --binary=*) binary="${1#*=}"; build=0; shift ;;
    --out) out="${2:?--out needs a value}"; shift 2 ;;
    --out=*) out="${1#*=}"; shift ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

host="$(rustc -vV | sed -n 's/^host: //p')"
target="${target:-$host}"
case "$target" in
  x86_64-unknown-linux-gnu) deb_arch=amd64 rpm_arch=x86_64 elf_machine="X86-64" strip_tool=strip cross_prefix=x86_64-linux-gnu- ;;
  aarch64-unknown-linux-gnu) deb_arch=arm64 rpm_arch=aarch64 elf_machine="AArch64" strip_tool=strip cross_prefix=aarch64-linux-gnu- ;;
  *) die "unsupported target '$target': use x86_64-unknown-linux-gnu or aarch64-unknown-linux-gnu" ;;
esac
case "$profile" in
  release) profile_dir=release ;;
  dev) profile_dir=debug ;;
  *) die "unsupported profile '$profile': use release or dev" ;;
esac
[[ -z "$version" || "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+([.~+][0-9A-Za-z.~+]*)?$ ]] ||
  die "--version '$version' is not a version like 1.2.3"

# --- tools --------------------------------------------------------------------------------
if ! cargo deb --version >/dev/null 2>&1 || ! cargo generate-rpm --version >/dev/null 2>&1; then
  log "installing cargo-deb and cargo-generate-rpm (once, into ~/.cargo/bin; a few minutes)"
  cargo install --locked cargo-deb@3.8.0 cargo-generate-rpm@0.21.1
fi

# --- inputs -------------------------------------------------------------------------------
# Every file the packages ship must be there; a missing one is a broken checkout, not
# something to package around.
required=(packaging/sbom.py config/config.toml systemd/hybrid-gateway.service systemd/hybrid-gateway.sysusers
  systemd/rt_protos.conf packaging/kubernetes/rbac.yaml packaging/kubernetes/rbac-per-az.yaml packaging/iam-policy.json
  packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm packaging/debian/changelog
  packaging/debian/copyright packaging/debian/lintian-overrides
  packaging/rpm/post_install.sh packaging/rpm/pre_uninstall.sh packaging/rpm/post_uninstall.sh
  monitoring/grafana-dashboard.json monitoring/alerts.yml docs/runbook.md
  README.md LICENSE)
for f in "${required[@]}"; do
  [[ -f "$f" ]] || die "$f is missing: both packages ship it (Cargo.toml [package.metadata.deb] / [package.metadata.generate-rpm] assets). Restore it (git checkout -- $f) or update the asset lists."
done
# Every policy/manifest under packaging/ (packaging/*.json|yaml, packaging/kubernetes/*.yaml)
# must be in both asset lists: a new one must not silently stay out of the packages.
shopt -s nullglob
for f in packaging/*.json packaging/*.yaml packaging/*.yml packaging/kubernetes/*.yaml packaging/kubernetes/*.yml; do
  n="$(grep -c -F "\"$f\"" Cargo.toml || true)"
  ((n >= 2)) || die "$f is not in both package asset lists in Cargo.toml: add it under usr/share/hybrid-gateway/ in [package.metadata.deb] and [package.metadata.generate-rpm]"
done
shopt -u nullglob

meta="$(cargo metadata --format-version 1 --no-deps)"
target_dir="$(printf '%s' "$meta" | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
cargo_version="$(printf '%s' "$meta" | python3 -c 'import json,sys; print([p for p in json.load(sys.stdin)["packages"] if p["name"]=="hybrid-gateway"][0]["version"])')"
version="${version:-$cargo_version}"
out="${out:-$target_dir/packages}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

# --- build --------------------------------------------------------------------------------
cargo_target_args=()
if [[ "$target" != "$host" ]]; then
  cargo_target_args=(--target "$target")
  bin="$target_dir/$target/$profile_dir/hybrid-gateway"
  triple_env="$(echo "$target" | tr 'a-z-' 'A-Z_')"
  cc_env="$(echo "$target" | tr '-' '_')"
  if command -v "${cross_prefix}gcc" >/dev/null; then
    linker_var="CARGO_TARGET_${triple_env}_LINKER"
    [[ -n "${!linker_var:-}" ]] || export "$linker_var=${cross_prefix}gcc"
    export "CC_${cc_env}=${cross_prefix}gcc" "CXX_${cc_env}=${cross_prefix}g++" "AR_${cc_env}=${cross_prefix}ar"
  elif ((build)); then
    die "no cross compiler ${cross_prefix}gcc: apt-get install gcc-${cross_prefix%-}; rustup target add $target"
  fi
  command -v "${cross_prefix}strip" >/dev/null && strip_tool="${cross_prefix}strip"
else
  bin="$target_dir/$profile_dir/hybrid-gateway"
fi
[[ -z "$binary" ]] || bin="$binary"
if ((build)); then
  log "cargo build --bin hybrid-gateway --profile $profile ${cargo_target_args[*]}"
  cargo build --bin hybrid-gateway --profile "$profile" "${cargo_target_args[@]}"
fi
[[ -x "$bin" ]] || die "no binary at $bin: build it (cargo build --profile $profile ${cargo_target_args[*]}) or drop --no-build"
readelf -h "$bin" | grep -q "Machine:.*$elf_machine" || die "$bin is not a $target binary"

# --- stage --------------------------------------------------------------------------------
# Both tools read "target/release/hybrid-gateway" relative to a target dir: point them at a
# stage holding a stripped copy (a dev binary carries ~900 MB of debug info), so both
# packages ship the same bytes and the cargo build output is never modified.
stage="$out/stage"
rm -rf "$stage"
mkdir -p "$stage/$target/release"
"$strip_tool" --strip-all -o "$stage/$target/release/hybrid-gateway" "$bin"
chmod 0755 "$stage/$target/release/hybrid-gateway"
# The SBOM sits next to the binary so both tools find it as target/release/... too.
python3 packaging/sbom.py --target "$target" --version "$version" --out "$stage/$target/release/hybrid-gateway.cdx.json"
# Shell completions and the man page, from the packaged binary's own CLI definition (a
# hidden `generate` subcommand), so they always match it. A foreign-architecture binary
# runs only where binfmt_misc + qemu-user can run it.
rel="$stage/$target/release"
gen() { "$rel/hybrid-gateway" generate "$@"; }
gen man >/dev/null 2>&1 ||
  die "cannot run $bin here to generate completions and the man page (a $target binary: install qemu-user-static with binfmt support, or build on $target)"
gen completions bash >"$rel/hybrid-gateway.bash"
gen completions zsh >"$rel/_hybrid-gateway"
gen completions fish >"$rel/hybrid-gateway.fish"
gen man | gzip -9n >"$rel/hybrid-gateway.8.gz"

deb="$out/hybrid-gateway_${version}-1_${deb_arch}.deb"
rpm="$out/hybrid-gateway-${version}-1.${rpm_arch}.rpm"
rm -f "$deb" "$rpm"

log "cargo deb -> $deb"
CARGO_TARGET_DIR="$stage" cargo deb --no-build --no-strip --no-dbgsym --target "$target" \
  --deb-version "${version}-1" --output "$deb" >&2

log "cargo generate-rpm -> $rpm"
rpm_args=(--target-dir "$stage" --target "$target" --payload-compress gzip --output "$rpm")
[[ "$version" == "$cargo_version" ]] || rpm_args+=(--set-metadata "version = \"$version\"")
cargo generate-rpm "${rpm_args[@]}" >&2

[[ -s "$deb" ]] || die "cargo deb did not produce $deb"
[[ -s "$rpm" ]] || die "cargo generate-rpm did not produce $rpm"
cp "$stage/$target/release/hybrid-gateway.cdx.json" "$out/hybrid-gateway-${version}.${rpm_arch}.cdx.json"
rm -rf "$stage"
log "built ($profile profile, $target, version $version)"
echo "deb: $deb"
echo "rpm: $rpm"
