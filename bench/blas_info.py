"""Which BLAS a Python baseline really ran: the library, its version, the kernel it chose
(OpenBLAS's architecture: "Haswell" when OPENBLAS_CORETYPE forces it, the machine's own,
e.g. "Zen" or "SkylakeX", otherwise), its threads, and the OPENBLAS_* variables the
process saw. Recorded beside every baseline figure (docs/benchmarks.md)."""
import os

# The variables that make OpenBLAS pick a slower kernel or blocking on these machines.
HANDICAPS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def fair_env(base=None):
    """A copy of the environment without the OpenBLAS handicaps: for a baseline's own
    command only (tests keep the machine's environment)."""
    env = dict(os.environ if base is None else base)
    for name in HANDICAPS:
        env.pop(name, None)
    return env


def blas_record():
    """[{"library", "version", "kernel", "threads"}] for each BLAS loaded in this process,
    plus the OPENBLAS_* environment it runs under. Call after numpy/torch are imported."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # python3-threadpoolctl not installed: say so rather than guess
        return {"blas": "unknown (python3-threadpoolctl missing)",
                "env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}}
    libraries = [{"library": i.get("internal_api"), "version": i.get("version"),
                  "kernel": i.get("architecture"), "threads": i.get("num_threads"),
                  "path": i.get("filepath")}
                 for i in threadpool_info() if i.get("user_api") == "blas"]
    return {"blas": libraries,
            "env": {k: v for k, v in os.environ.items() if k.startswith("OPENBLAS")}}
