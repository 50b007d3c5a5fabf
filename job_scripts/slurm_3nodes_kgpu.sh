#!/bin/bash
# mpcgpu on THREE nodes with K GPUs each: K groups of three parties under one srun.
#
#   sbatch --ntasks-per-node=4 --gpus-per-node=4 job_scripts/slurm_3nodes_kgpu.sh \
#       train --model lenet --data /local/mpcgpu/mnist_train --test-data /local/mpcgpu/mnist_test
#
# All arguments are passed to `python -m mpcgpu.cli`.  K is --ntasks-per-node (default 2
# below; ADAPT it together with the GPU request).  3K tasks in all, laid out in BLOCKS:
#
#   node 0 (organisation 0): ranks 0 .. K-1    = party 0 of groups 0 .. K-1
#   node 1 (organisation 1): ranks K .. 2K-1   = party 1 of groups 0 .. K-1
#   node 2 (organisation 2): ranks 2K .. 3K-1  = party 2 of groups 0 .. K-1
#
# which is mpcgpu's default layout (MPCGPU_LAYOUT=block: rank p*K + g plays party p in group
# g) and SLURM's --distribution=block.  So each organisation's node holds only its own
# party's ranks; the ranks of one node add up their own share components (gradients,
# counts) among themselves, and only the group exchanges cross between nodes.  Each rank
# uses GPU SLURM_LOCALID of its node (mpcgpu takes the launcher's local rank modulo the GPUs
# it sees; with --gpus-per-task=1 instead, each rank sees only its own GPU).
#
# The deployment (as for slurm_3nodes_1gpu.sh; job_scripts/README.md):
#   * node i holds ONLY its party's shard files STEM.party<i>.h5 (all K ranks of the node read
#     the same file: each group takes its own rows), in a node-local directory;
#   * node i holds ONLY its party's private key KEY_DIR/party<i>.key; the parties file (public
#     keys) may be shared.  Every group agrees its own channel keys and PRG keys at start-up.
#
# ADAPT the #SBATCH lines and the marked placeholders; check with `bash -n` after editing.
#
#SBATCH --job-name=mpcgpu-3nkg
#SBATCH --nodes=3
#SBATCH --ntasks-per-node=2        # ADAPT: K, the GPUs each organisation contributes
#SBATCH --gpus-per-node=2          # ADAPT: = K (or --gres=gpu:K)
#SBATCH --cpus-per-task=8          # ADAPT: cores per rank
#SBATCH --mem=0                    # ADAPT
#SBATCH --time=01:00:00            # ADAPT
#SBATCH --distribution=block       # ranks [pK, pK+K) on node p: one organisation per node
#SBATCH --output=mpcgpu-%j.out
##SBATCH --partition=gpu           # ADAPT: remove one '#' and name your GPU partition
##SBATCH --account=my_account      # ADAPT: remove one '#' if your site needs an account
##SBATCH --exclusive               # ADAPT: recommended for timings

set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: sbatch --ntasks-per-node=K --gpus-per-node=K $0 COMMAND [ARGS...]" >&2
  exit 2
fi
K=${SLURM_NTASKS_PER_NODE:-2}
K=${K%%(*}                         # "2(x3)" -> 2
NTASKS=$(( 3 * K ))

# ---- software environment (ADAPT: placeholders) -------------------------------------
# module purge
# module load cuda/12.4              # the CUDA your CuPy wheel expects (cupy-cuda12x: CUDA 12)
# module load openmpi/5.0-cuda       # a system MPI is recommended across nodes (see README.md)
# source "$HOME/venvs/mpcgpu/bin/activate"   # the venv with mpcgpu, mpi4py, cupy-cuda12x
PYTHON=${PYTHON:-python}

# ---- mpcgpu settings ---------------------------------------------------------------
export MPCGPU_DEVICE=cuda            # fail loudly if a task has no GPU, never fall back to CPU
export MPCGPU_LAYOUT=block           # rank p*K + g = party p of group g (matches --distribution=block)
# MPCGPU_CUDA_AWARE: 1 = GPU buffers straight to MPI (a CUDA-aware MPI); 0 = staged through
# host memory (any MPI, the pip mpich wheel included).  Unset = auto-detect.
export MPCGPU_CUDA_AWARE=${MPCGPU_CUDA_AWARE:-0}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export PYTHONUNBUFFERED=1

# ---- channels between the parties (ADAPT the two paths) -----------------------------
# KEY_DIR is NODE-LOCAL: on node i it holds party<i>.key only; {party} is each rank's party.
KEY_DIR=${KEY_DIR:-/etc/mpcgpu}                       # ADAPT
export MPCGPU_PARTIES=${MPCGPU_PARTIES:-$HOME/mpcgpu/parties.json}   # ADAPT
export MPCGPU_KEY=${MPCGPU_KEY:-$KEY_DIR/party{party\}.key}
# a rank silent for this long (in any group) aborts the whole job, naming its party and group
export MPCGPU_PEER_TIMEOUT=${MPCGPU_PEER_TIMEOUT:-600}
if [ "${MPCGPU_INSECURE_CHANNELS:-0}" != "1" ] && [ ! -f "$MPCGPU_PARTIES" ]; then
  echo "no parties file $MPCGPU_PARTIES: make the keys (mpcgpu keygen --help) or set" \
       "MPCGPU_INSECURE_CHANNELS=1 to send everything in clear (trusted network only)" >&2
  exit 2
fi

# ---- each party's shards on its own node (ADAPT) ------------------------------------
# Party i's files (STEM.party<i>.h5) go to node i only, e.g. /local/mpcgpu/ on each node;
# pass the stem (--data /local/mpcgpu/mnist).  Checkpoints (--checkpoint-dir) are written by
# group 0's rank of each party: a node-local directory is right.

# ---- launch ----------------------------------------------------------------------
SRUN_MPI=${SRUN_MPI:-pmi2}           # ADAPT: pmix for Open MPI, pmi2 for MPICH-family
echo "mpcgpu: job ${SLURM_JOB_ID:-?} on nodes ${SLURM_JOB_NODELIST:-?}, $K groups of three, command: $*"
srun --ntasks="$NTASKS" --ntasks-per-node="$K" --distribution=block --mpi="$SRUN_MPI" \
     --kill-on-bad-exit=1 \
     bash -c 'echo "rank ${SLURM_PROCID} (party $(( SLURM_PROCID / '"$K"' )), group $(( SLURM_PROCID % '"$K"' ))) on $(hostname) GPU ${SLURM_LOCALID}"; exec "$0" "$@"' \
     "$PYTHON" -m mpcgpu.cli "$@"
