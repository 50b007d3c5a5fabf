#!/bin/bash
# mpcgpu on THREE nodes with ONE GPU each: one MPI task per node, party i on node i.
#
#   sbatch job_scripts/slurm_3nodes_1gpu.sh infer --model /local/mpcgpu/lenet --data /local/mpcgpu/mnist
#
# All arguments are passed to `python -m mpcgpu.cli`.  The deployment this script assumes
# (README.md "Deployment on three nodes"; docs/design.md §1):
#   * each node i holds ONLY its own shard files STEM.party<i>.h5, in a directory that the
#     other two servers cannot read (node-local disk, or a per-party directory with its own
#     permissions) -- never all three shards on one shared /scratch, where whoever reads the
#     directory reads every secret;
#   * each node i holds ONLY its own private key KEY_DIR/party<i>.key (made on that node by
#     `mpcgpu keygen --out KEY_DIR --party i`, mode 0600);
#   * the parties file (the three PUBLIC keys, `mpcgpu keygen --parties ...`) may be shared.
# The channels between the parties are then encrypted AND authenticated (AES-256-GCM after
# a signed key exchange); without a parties file the job refuses to start across nodes.
#
# ADAPT the #SBATCH lines (partition, account, time, GPU request) and the marked
# placeholders below; check the script with `bash -n` after editing.
#
#SBATCH --job-name=mpcgpu-3n1g
#SBATCH --nodes=3
#SBATCH --ntasks=3                 # one task per party: SLURM_PROCID = MPI rank = party index
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1          # or: --gres=gpu:1
#SBATCH --cpus-per-task=8          # ADAPT: cores per party
#SBATCH --mem=0                    # ADAPT
#SBATCH --time=01:00:00            # ADAPT
#SBATCH --output=mpcgpu-%j.out
##SBATCH --partition=gpu           # ADAPT: remove one '#' and name your GPU partition
##SBATCH --account=my_account      # ADAPT: remove one '#' if your site needs an account
##SBATCH --exclusive               # ADAPT: recommended for timings

set -euo pipefail

if [ $# -eq 0 ]; then
  echo "usage: sbatch $0 COMMAND [ARGS...]   (e.g. infer --model shards/lenet --data shards/mnist)" >&2
  exit 2
fi

# ---- software environment (ADAPT: placeholders) -------------------------------------
# module purge
# module load cuda/12.4              # the CUDA your CuPy wheel expects (cupy-cuda12x: CUDA 12)
# module load openmpi/5.0-cuda       # a system MPI is recommended across nodes (see README.md)
# source "$HOME/venvs/mpcgpu/bin/activate"   # the venv with mpcgpu, mpi4py, cupy-cuda12x
PYTHON=${PYTHON:-python}

# ---- mpcgpu settings ---------------------------------------------------------------
export MPCGPU_DEVICE=cuda            # fail loudly if a task has no GPU, never fall back to CPU
# MPCGPU_CUDA_AWARE: 1 = send GPU buffers directly (needs an MPI built with CUDA support,
# e.g. Open MPI + UCX with CUDA, or MVAPICH2-GDR; uses GPUDirect RDMA across nodes where the
# network supports it); 0 = copy every message through host memory (works with any MPI,
# including the pip `mpich` wheel, which is not CUDA-aware).  Unset = auto-detect.
export MPCGPU_CUDA_AWARE=${MPCGPU_CUDA_AWARE:-0}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export OPENBLAS_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}
export PYTHONUNBUFFERED=1
# (no MPICH progress throttle here: every party has a node of its own)

# ---- channels between the parties (ADAPT the two paths) -----------------------------
# KEY_DIR is a NODE-LOCAL directory: on node i it holds party<i>.key only.  {party} is
# replaced by each task's party index.  PARTIES is the parties file (public keys).
KEY_DIR=${KEY_DIR:-/etc/mpcgpu}                       # ADAPT
export MPCGPU_PARTIES=${MPCGPU_PARTIES:-$HOME/mpcgpu/parties.json}   # ADAPT
export MPCGPU_KEY=${MPCGPU_KEY:-$KEY_DIR/party{party\}.key}
# a party silent for this long (stopped, crashed, partitioned) aborts the job on every node
export MPCGPU_PEER_TIMEOUT=${MPCGPU_PEER_TIMEOUT:-600}
if [ "${MPCGPU_INSECURE_CHANNELS:-0}" != "1" ] && [ ! -f "$MPCGPU_PARTIES" ]; then
  echo "no parties file $MPCGPU_PARTIES: make the keys (mpcgpu keygen --help) or set" \
       "MPCGPU_INSECURE_CHANNELS=1 to send everything in clear (trusted network only)" >&2
  exit 2
fi

# ---- each party's shards on its own node (ADAPT) ------------------------------------
# The data and model owners copy party i's files (STEM.party<i>.h5) to node i only, e.g.
#   scp mnist.party1.h5 lenet.party1.h5 node1:/local/mpcgpu/
# and pass the stem (--data /local/mpcgpu/mnist): each rank opens only its own file.

# ---- launch ----------------------------------------------------------------------
# --mpi: the PMI plugin your MPI speaks (list them with `srun --mpi=list`):
#   pmix  for Open MPI 4/5 and most recent MPICH builds (ADAPT: pmix_v3, pmix_v4, ... on some sites)
#   pmi2  for MPICH / Intel MPI / MVAPICH2 (and the pip mpich wheel)
SRUN_MPI=${SRUN_MPI:-pmi2}           # ADAPT
echo "mpcgpu: job ${SLURM_JOB_ID:-?} on nodes ${SLURM_JOB_NODELIST:-?}, command: $*"
srun --ntasks=3 --ntasks-per-node=1 --distribution=block --mpi="$SRUN_MPI" \
     --kill-on-bad-exit=1 \
     bash -c 'echo "party ${SLURM_PROCID} on $(hostname) GPU ${CUDA_VISIBLE_DEVICES:-?}"; exec "$0" "$@"' \
     "$PYTHON" -m mpcgpu.cli "$@"
