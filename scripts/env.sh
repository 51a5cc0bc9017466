# Sourced by the other scripts. Builds go to a cargo target dir outside the checkout, so a fresh
# clone (CI's) reuses the previous build instead of compiling everything again. Override with
# CARGO_TARGET_DIR.
export PATH="$HOME/.cargo/bin:$PATH"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/target}"
mkdir -p "$CARGO_TARGET_DIR"
