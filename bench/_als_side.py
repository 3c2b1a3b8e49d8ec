"""implicit's ALS side of ``bench/time_to_quality.py``, run in its own venv (it imports no twotower code).

    python bench/_als_side.py --train T.npz --out O.npz --configs 64:0.01:1,64:0.05:10 --iterations 15

``T.npz`` holds ``user``, ``item`` (int64, one entry per train interaction, twotower's indices) and
``shape`` (num_users, num_items). The user x item confidence matrix is the interaction count (duplicates
summed) times ``alpha`` (Hu, Koren & Volinsky, ICDM 2008, eq. 1 with c = 1 + alpha * r). Every config
``factors:regularization:alpha`` is trained one sweep at a time (``fit(iterations=1)`` continues from the
factors it holds), and after each sweep the factors and the seconds since the fit started are stored.

Writes ``O.npz``: for config c and sweep s, ``user_c_s`` (num_users, factors) and ``item_c_s``
(num_items, factors) float32, ``seconds_c`` (iterations,) cumulative fit seconds (matrix build
included), ``import_s`` (seconds to import implicit), and ``configs`` (the strings).
"""
from __future__ import annotations

import argparse
import time

t_import = time.perf_counter()
import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402

IMPORT_S = time.perf_counter() - t_import


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--train", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--configs", default="64:0.01:1")
    p.add_argument("--iterations", type=int, default=15)
    p.add_argument("--threads", type=int, default=0, help="OpenMP threads of implicit (0 = every core)")
    args = p.parse_args()
    data = np.load(args.train)
    num_users, num_items = (int(x) for x in data["shape"])
    out: dict[str, np.ndarray] = {"import_s": np.float64(IMPORT_S), "configs": np.array(args.configs.split(","))}
    for c, spec in enumerate(args.configs.split(",")):
        factors, reg, alpha = spec.split(":")
        t0 = time.perf_counter()
        counts = sp.csr_matrix((np.ones(len(data["user"]), np.float32), (data["user"], data["item"])),
                               shape=(num_users, num_items))
        counts.sum_duplicates()
        model = AlternatingLeastSquares(factors=int(factors), regularization=float(reg), alpha=float(alpha),
                                        iterations=1, num_threads=args.threads, random_state=0)
        seconds = []
        for s in range(args.iterations):
            model.fit(counts, show_progress=False)
            seconds.append(time.perf_counter() - t0)
            out[f"user_{c}_{s}"] = np.array(model.user_factors, np.float32)
            out[f"item_{c}_{s}"] = np.array(model.item_factors, np.float32)
        out[f"seconds_{c}"] = np.array(seconds)
    np.savez(args.out, **out)


if __name__ == "__main__":
    main()
