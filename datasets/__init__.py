"""Dataset converters: standard downloads -> mpcgpu plaintext dataset files (HDF5).

    python -m datasets.mnist SRC_DIR OUT_DIR
    python -m datasets.cifar10 cifar-10-python.tar.gz OUT_DIR
    python -m datasets.imagefolder ROOT OUT.h5 --size 64
    python -m datasets.synthetic --model lenet -n 128 OUT.h5
    python -m datasets.tokens ids.npy OUT.h5 --vocab 30522 --seq-len 128

The file layout is defined in ``mpcgpu.assets.dataset_h5`` (re-exported by
``datasets.common``), that of token ids in ``mpcgpu.data.tokens``; see datasets/README.md.
"""
