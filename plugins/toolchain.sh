# Shared by plugins/<lang>/build: where toolchains live and how a missing one
# is reported. Sourced, not run.
#
# Toolchains install once, pinned, under $FRESHET_CACHE/toolchains (default
# ~/.cache/freshet/toolchains), each in a folder named after its version, so a
# version bump installs beside the old one and nothing is shared with the
# machine's own packages.
#
# FRESHET_NO_INSTALL=1 turns an install into a report: the tests' build script
# sets it, so a missing toolchain fails the build with the command that
# installs it instead of a download in the middle of `cargo test`.

set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
toolchains="${FRESHET_CACHE:-$HOME/.cache/freshet}/toolchains"

# missing WHAT HOW: stops with "toolchain missing" when installing is off;
# otherwise says what is about to be installed.
missing() {
  if [[ "${FRESHET_NO_INSTALL:-0}" == 1 ]]; then
    echo "toolchain missing: $1; install with: $2" >&2
    exit 3
  fi
  echo "installing $1" >&2
}

# usage NAME: the common command line of every build script.
parse_args() {
  out=""
  install_only=0
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -o) out="$2"; shift 2 ;;
      --install-only) install_only=1; shift ;;
      -h|--help)
        echo "usage: $0 [-o OUT.wasm] [--install-only]"
        echo "Installs the pinned toolchain (once) and builds the component (default: $default_out)."
        exit 0 ;;
      *) echo "$0: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
  done
  out="${out:-$default_out}"
  mkdir -p "$(dirname "$out")"
  out="$(cd "$(dirname "$out")" && pwd)/$(basename "$out")"
}

# cargo_tool CRATE VERSION FEATURES BINARY LANG: a pinned `cargo install`
# with only the features the builds use (each compiles for minutes on two
# cores); prints the binary's path. LANG names the build script to suggest.
cargo_tool() {
  local dir="$toolchains/$1-$2-${3//,/-}"
  if [[ ! -x "$dir/bin/$4" ]]; then
    missing "$1 $2 (crates.io)" "plugins/$5/build --install-only"
    # Its own target folder, not the project's: nothing of it is shared.
    env -u CARGO_TARGET_DIR cargo install --quiet --locked "$1" --version "$2" \
      --no-default-features --features "$3" --root "$dir"
  fi
  echo "$dir/bin/$4"
}

# wit_bindgen_cli LANG, wasm_tools_cli LANG: the one wit-bindgen and the one
# wasm-tools the C and Go builds share.
wit_bindgen_cli() { cargo_tool wit-bindgen-cli 0.61.0 c,go wit-bindgen "$1"; }
wasm_tools_cli() { cargo_tool wasm-tools 1.243.0 component wasm-tools "$1"; }
