# Shared by scripts/run and scripts/test: install what is missing, then configure and build.
# Sourced, not run.

REPATCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REPATCH_BUILD="${REPATCH_BUILD:-$REPATCH_ROOT/build}"

# Debian 12 packages the project needs to build, test and benchmark.
REPATCH_PACKAGES=(
  cmake g++ make pkg-config  # g++ brings the sanitizer runtimes (libasan8, libtsan2, libubsan1)
  libzydis-dev liburcu-dev libboost-dev
  googletest libgtest-dev libgmock-dev libbenchmark-dev
  valgrind
  python3 gnuplot-nox  # bench/run-all: the tables (bench/report.py) and the plots
  clang libclang-rt-14-dev  # libFuzzer for scripts/fuzz; -Wthread-safety in scripts/test
  clang-format clang-tidy  # scripts/check-format, scripts/check-tidy
  spin  # model/check: the switch protocol's Promela model
)

repatch_install_missing() {
  local missing=()
  for p in "${REPATCH_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "repatch: installing ${missing[*]}"
  local sudo=()
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "repatch: need root (or sudo) to install ${missing[*]}" >&2; return 1; }
    sudo=(sudo)
  fi
  export DEBIAN_FRONTEND=noninteractive
  "${sudo[@]}" apt-get update -qq
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
}

# repatch_build [extra cmake arguments...]
repatch_build() {
  cmake -S "$REPATCH_ROOT" -B "$REPATCH_BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo "$@" >/dev/null
  cmake --build "$REPATCH_BUILD" -j"$(nproc)"
}
