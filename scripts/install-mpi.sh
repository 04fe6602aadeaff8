#!/usr/bin/env bash
# Installs Open MPI (mpirun and libmpi) from the distribution's packages when it is missing: what the distributed
# training tests and `mpirun ... manml train --distributed mpi` need. Training in one process needs no MPI.
# Debian/Ubuntu: openmpi-bin and libopenmpi-dev, as root or through sudo without a password.
set -euo pipefail
if command -v mpirun >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libmpi\.so\.40'; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-mpi.sh: no apt-get here; install Open MPI (mpirun and libmpi.so.40) with this system's package manager." >&2
  exit 1
fi
if [ "$(id -u)" = 0 ]; then run=(); elif sudo -n true 2>/dev/null; then run=(sudo -n); else
  echo "install-mpi.sh: installing Open MPI needs root: run 'sudo apt-get install openmpi-bin libopenmpi-dev' once." >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
"${run[@]}" apt-get update -qq
"${run[@]}" apt-get install -y -qq --no-install-recommends openmpi-bin libopenmpi-dev >/dev/null
command -v mpirun >/dev/null
