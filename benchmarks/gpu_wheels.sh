#!/usr/bin/env bash
# The wheels benchmarks/gpu_embed.sh needs on a lent GPU machine that cannot reach a package index and whose image
# already holds torch, torchvision, numpy, pyarrow, pillow, fsspec, scipy, pyyaml, grpcio, protobuf, requests, ...
# (the device library's KINDS.md list): mmembed's own needs missing there, for CPython 3.12 on x86-64, into .whl/
# (about 45 MB; the device call's carry limit is 64 MiB with the repository). Run here, once, with network:
#   bash benchmarks/gpu_wheels.sh && echo /.whl/ >> .git/info/exclude
# gpu_embed.sh installs .whl/*.whl into /tmp/site when the folder is there.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl \
    apache-beam==2.77.0 open-clip-torch==3.3.0 webdataset==1.0.2 ImageHash==4.3.2 braceexpand==0.1.7 \
    ftfy==6.3.1 wcwidth==0.9.4 pywavelets==1.10.0 fastavro==1.13.1 fasteners==0.20 httplib2==0.32.1 \
    jsonpickle==4.1.4 objsize==0.7.1 proto-plus==1.29.0 pymongo==4.20.1 dnspython==2.9.2 pytz==2026.6 \
    zstandard==0.25.0 beartype==0.22.9 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
du -sh .whl
