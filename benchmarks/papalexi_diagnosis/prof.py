import cProfile
import pstats
import shutil
import sys
import time
from pathlib import Path

import yaml

src = Path("/tmp/pap/run0")
dst = Path("/tmp/pap/run_prof")
if dst.exists():
    shutil.rmtree(dst)
shutil.copytree(src, dst)
cfg = yaml.safe_load((dst / "config.yaml").read_text())
cfg["evaluate"]["n_samples"] = int(sys.argv[1])
(dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
t0 = time.perf_counter()
cProfile.run("cli.evaluate(dst)", "/tmp/pap/prof.out")
print("total", time.perf_counter() - t0)
pstats.Stats("/tmp/pap/prof.out").sort_stats("cumulative").print_stats(40)
