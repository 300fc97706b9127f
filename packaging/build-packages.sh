#!/usr/bin/env bash
# Builds the onboarding-agent packages: one command, from a checkout, as root on Debian or as a
# user who already has the tools.
#
#   packaging/build-packages.sh            # amd64 and arm64 (ARCHES=amd64 for one)
#
# What it does (packaging/README.md has the details):
#   1. the static agent and its OIDC credential plugin: profile release-agent, agent feature
#      only, target <arch>-unknown-linux-musl (installs the rustup target, Debian's
#      musl-tools and, for arm64, gcc-aarch64-linux-gnu when missing);
#   2. onboarding-agent_<version>-1_<arch>.deb with cargo-deb and
#      onboarding-agent-<version>-1.<arch>.rpm with cargo-generate-rpm (both installed with
#      `cargo install --locked` at the pinned versions below when missing);
#   3. each with a .sha256 in `sha256sum --check` format, and the endpoint's local repository
#      layout beside them: install/{deb,rpm}/<arch>/onboarding-agent.{deb,rpm} with a .sha256
#      that names the file as it is downloaded (`sha256sum --check onboarding-agent.deb.sha256`).
# Output: $CARGO_TARGET_DIR/packages (target/packages by default).
set -euo pipefail

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
arches=${ARCHES:-amd64 arm64}
started=$(date +%s)

as_root() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "build-packages: $* needs root (or install it yourself)" >&2
        exit 1
    fi
    "$@"
}

apt_install() {
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "$@" >/dev/null
}

# cargo install only when the pinned version is not the one on PATH.
ensure_cargo_tool() {
    local crate=$1 version=$2 probe=$3
    if ! cargo "$probe" --version 2>/dev/null | grep -qF "$version"; then
        echo "== installing $crate $version"
        cargo install --quiet --locked "$crate" --version "$version"
    fi
}

# Debian architecture -> Rust target, RPM architecture, C compiler/linker for the target.
rust_target() { case $1 in amd64) echo x86_64-unknown-linux-musl ;; arm64) echo aarch64-unknown-linux-musl ;; *) echo "unknown architecture $1 (amd64, arm64)" >&2; exit 2 ;; esac; }
rpm_arch() { case $1 in amd64) echo x86_64 ;; arm64) echo aarch64 ;; esac; }

meta=$(cargo metadata --format-version 1 --no-deps)
version=$(python3 -c 'import json,sys; m=json.load(sys.stdin); print(next(p["version"] for p in m["packages"] if p["name"]=="workload-onboarding"))' <<<"$meta")
target_dir=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])' <<<"$meta")
out=$target_dir/packages

# The Debian changelog's newest entry must be this version, or the package would say otherwise.
changelog_version=$(sed -n '1s/^onboarding-agent (\([^)]*\)).*/\1/p' packaging/debian/changelog)
if [ "${changelog_version%-*}" != "$version" ]; then
    echo "build-packages: packaging/debian/changelog's newest entry is $changelog_version, Cargo.toml says $version: add a changelog entry for $version" >&2
    exit 2
fi
revision=${changelog_version##*-}

echo "== tools"
command -v musl-gcc >/dev/null || apt_install musl-tools
ensure_cargo_tool cargo-deb "$CARGO_DEB_VERSION" deb
ensure_cargo_tool cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION" generate-rpm

mkdir -p "$out"
targets=()
for arch in $arches; do
    target=$(rust_target "$arch")
    targets+=(--target "$target")
    rustup target list --installed | grep -qx "$target" || rustup target add "$target"
    target_env=$(echo "$target" | tr 'a-z-' 'A-Z_')
    case $arch in
        amd64)
            export CC_x86_64_unknown_linux_musl=musl-gcc
            ;;
        arm64)
            # Rust's aarch64 musl target brings its own musl libc.a and crt objects (rustup's
            # self-contained directory, linked because the target is static); Debian's cross
            # gcc only drives the linker (adding libgcc) and compiles ring's C and assembly.
            # The wrapper makes the link static-pie, as amd64's is (see its comments).
            command -v aarch64-linux-gnu-gcc >/dev/null || apt_install gcc-aarch64-linux-gnu
            export CC_aarch64_unknown_linux_musl=aarch64-linux-gnu-gcc
            export "CARGO_TARGET_${target_env}_LINKER=$repo/packaging/aarch64-musl-static-pie-linker"
            ;;
    esac
done

# One cargo run for every architecture: the host's build scripts and proc macros are built
# once, and the long single-threaded LTO links of the targets run side by side.
echo "== agent for $arches (${targets[*]}, profile release-agent, agent feature only)"
t=$(date +%s)
cargo build --quiet --locked --profile release-agent --no-default-features --features agent \
    "${targets[@]}" --bin onboarding-agent --bin onboarding-agent-oidc-credential-plugin
echo "built in $(( $(date +%s) - t ))s"

for arch in $arches; do
    target=$(rust_target "$arch")
    rarch=$(rpm_arch "$arch")
    bin_dir=$target_dir/$target/release-agent
    for b in onboarding-agent onboarding-agent-oidc-credential-plugin; do
        # Static: no program interpreter, no shared libraries (it must run on glibc 2.17
        # distributions as on musl ones); position independent (ELF type DYN: static-pie,
        # loaded at a random address); and for the architecture it is packaged for.
        if readelf -lW "$bin_dir/$b" | grep -q 'Requesting program interpreter' \
            || readelf -dW "$bin_dir/$b" | grep -q '(NEEDED)'; then
            echo "build-packages: $bin_dir/$b is not static" >&2
            exit 1
        fi
        if ! readelf -hW "$bin_dir/$b" | grep -q '^ *Type: *DYN'; then
            echo "build-packages: $bin_dir/$b is not a static-pie executable ($(readelf -hW "$bin_dir/$b" | sed -n 's/^ *Type: *//p'))" >&2
            exit 1
        fi
        machine=$(readelf -hW "$bin_dir/$b" | sed -n 's/^ *Machine: *//p')
        case $arch:$machine in
            amd64:*X86-64) ;;
            arm64:AArch64) ;;
            *) echo "build-packages: $bin_dir/$b is for $machine, not $arch" >&2; exit 1 ;;
        esac
    done
    echo "== $arch: $(stat -c %s "$bin_dir/onboarding-agent") B agent, $(stat -c %s "$bin_dir/onboarding-agent-oidc-credential-plugin") B plugin"
    # The size budget of the agent as shipped (issue 8): a stripped static binary of at most
    # 4 MiB, on every architecture. The profile strips it already; a growth past the budget
    # fails the build here.
    agent_bytes=$(stat -c %s "$bin_dir/onboarding-agent")
    budget=$((4 * 1024 * 1024))
    echo "agent size ($arch): $agent_bytes B ($(awk -v b="$agent_bytes" 'BEGIN { printf "%.2f", b / 1048576 }') MiB) of a $budget B budget"
    if [ "$agent_bytes" -gt "$budget" ]; then
        echo "build-packages: the $arch agent ($agent_bytes B) is over its 4 MiB budget" >&2
        exit 1
    fi

    deb=onboarding-agent_${version}-${revision}_${arch}.deb
    rpm=onboarding-agent-${version}-${revision}.${rarch}.rpm
    echo "== $deb"
    # Stripped by the profile already (strip = true); cargo-deb's own strip would need the
    # target's binutils.
    cargo deb --quiet --no-build --no-strip --profile release-agent --target "$target" \
        --deb-revision "$revision" --output "$out/$deb"
    echo "== $rpm"
    cargo generate-rpm --profile release-agent --target "$target" \
        -s "release = \"$revision\"" --output "$out/$rpm"

    for kind in deb rpm; do
        file=$deb
        [ "$kind" = rpm ] && file=$rpm
        (cd "$out" && sha256sum "$file" > "$file.sha256")
        # The local repository's layout, as the endpoint serves it under /install/.
        repo_dir=$out/install/$kind/$arch
        mkdir -p "$repo_dir"
        cp -f "$out/$file" "$repo_dir/onboarding-agent.$kind"
        (cd "$repo_dir" && sha256sum "onboarding-agent.$kind" > "onboarding-agent.$kind.sha256")
        echo "$out/$file: $(stat -c %s "$out/$file") B"
    done
done
echo "== packages in $out (built in $(( $(date +%s) - started ))s)"
