"""glmix-stream: streaming, incrementally trained GLMix models on Kafka."""

import os

__version__ = "0.1.0"

# One BLAS thread per process, unless the environment says otherwise: glmix's dense algebra is small (L-BFGS
# vectors of the global model's width, per-entity solves), where a BLAS thread pool costs more than it gives,
# and on a busy machine its idle threads made a 100-column L-BFGS iteration ~100x slower (7 ms against 75 us).
# Parallelism comes from processes and partitions. It must be set before numpy loads its BLAS, hence here.
for _variable in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")
