"""The Python package's cost, beside the Rust engine and the reference, in one run.

  SMALLCAP_REF=<RitaRamo/smallcap checkout> python scripts/bench_python.py PERFDIR \
      --torch-python TORCHVENV/bin/python [--runs 2]

Run it with a Python that has the `smallcap` wheel installed (`pip install ./python`). PERFDIR is
`scripts/bench_opt_reference.py`'s folder (an opt-125m-sized SmallCapOPT, made there on first
use). In order:
1. the wheel's size (the installed `smallcap` package) and `import smallcap` time (median of 7
   fresh interpreters, minus a bare interpreter's start);
2. `scripts/bench_opt_reference.py PERFDIR --runs 1` under `--torch-python`: the reference's
   per-image encode + generate, then this project's `bench` binary (the library, no Python)
   checking every id against the reference's;
3. the same work from Python: `SmallCap.from_pretrained(PERFDIR/model)`, then for each fixture
   image `model.caption(path, captions=its 4 retrieved captions)` (infer.py's settings), per-image
   median over `--runs`, every generated id checked against the reference's (PERFDIR/cases.json).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ap = argparse.ArgumentParser()
ap.add_argument("perfdir")
ap.add_argument("--torch-python", required=True)
ap.add_argument("--tokenizer", default="../shared/fixtures/opt-tiny/tokenizer")
ap.add_argument("--runs", type=int, default=2)
args = ap.parse_args()
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
images = os.path.join(repo, "tests/fixtures/smallcap-tiny/images")
retrieved = json.load(open(os.path.join(repo, "tests/fixtures/smallcap-tiny/retrieved_caps.json")))

# 1. wheel size and import time
import smallcap  # noqa: E402

pkg = os.path.dirname(smallcap.__file__)
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(pkg) for f in fs)


def start(code):
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - t


bare = statistics.median(start("pass") for _ in range(7))
imported = statistics.median(start("import smallcap") for _ in range(7))
print(json.dumps({"installed_package_bytes": size, "import_s": round(imported - bare, 4)}))

# 2. the reference and the Rust library, in one run
subprocess.run([args.torch_python, os.path.join(repo, "scripts/bench_opt_reference.py"), args.perfdir,
                "--tokenizer", args.tokenizer, "--runs", "1"], check=True, cwd=repo)

# 3. from Python
want = {c["image"]: c for c in json.load(open(os.path.join(args.perfdir, "cases.json")))["cases"]}
t = time.perf_counter()
model = smallcap.SmallCap.from_pretrained(os.path.join(args.perfdir, "model"), tokenizer=args.tokenizer)
load_s = time.perf_counter() - t
per_image, equal, total = [], 0, 0
for run in range(args.runs):
    for name in sorted(want):
        caps = retrieved[name]
        t = time.perf_counter()
        out = model.caption(os.path.join(images, name), captions=caps, k=4)[0]
        per_image.append(time.perf_counter() - t)
        total += 1
        equal += out["generated_ids"] == want[name]["generated_ids"] and out["prompt_ids"] == want[name]["prompt_ids"]
print(json.dumps({"python": "SmallCap.caption, one image per call (decode + encode + generate)",
                  "load_s": round(load_s, 3), "per_image_s": round(statistics.median(per_image), 4),
                  "ids_equal_to_reference": f"{equal} of {total}"}))
