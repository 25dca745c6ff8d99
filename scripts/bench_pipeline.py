"""The paper's whole pipeline (RN50x64 retrieval + ViT-B/32 + GPT-2 beam search) beside the
reference, in one run.

  SMALLCAP_REF=<RitaRamo/smallcap> CLIP_REF=<openai/CLIP> GPT2_BPE=<encoder.json + vocab.bpe> \
      python scripts/bench_pipeline.py PERFDIR --torch-python REFVENV/bin/python [--runs 1]

PERFDIR is made by `../shared/oracle/perf_reference.py PERFDIR --make` (full-size SmallCap7M-shaped
checkpoint, OpenAI CLIP RN50x64 at 448 px, a 565,497 × 1024 flat-IP FAISS store; random weights).
In order, on the 11 fixture images:
1. the reference, `perf_reference.py` in fp32 and under `--autocast bf16`: per-image medians of
   retrieve (RN50x64 + search), encode, generate, and each image's retrieved and generated ids;
2. `smallcap caption` over the same files (`--datastore index,captions=…`, `--retrieval-encoder
   rn50x64.pt`, infer.py's generation settings), whole process (loading included), per image =
   wall time / 11, for each configuration below, with its retrieved captions and generated ids
   compared to the reference fp32's, and its peak anonymous memory (RssAnon of
   /proc/PID/status, sampled every 20 ms).
Prints Markdown rows.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

ap = argparse.ArgumentParser()
ap.add_argument("perfdir")
ap.add_argument("--torch-python", required=True)
ap.add_argument("--runs", type=int, default=1)
ap.add_argument("--skip-reference", action="store_true", help="reuse PERFDIR/ref_*.json from an earlier run")
ap.add_argument("--smallcap", default=None, help="the smallcap binary (default: target/release/smallcap)")
ap.add_argument("--configs", default="f32:f32:1,f32:f32:8,bf16:f32:1,bf16:f32:8,bf16:bf16:8",
                help="encoder precision:decoder weights:batch size, comma-separated")
args = ap.parse_args()
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
images = os.path.join(repo, "tests/fixtures/smallcap-tiny/images")
P = args.perfdir
oracle = os.path.join(repo, "..", "shared", "oracle", "perf_reference.py")
names = sorted(os.listdir(images))

# 1. the reference
ref = {}
for mode in ["off", "bf16"]:
    out = os.path.join(P, f"ref_{mode}.json")
    if not args.skip_reference:
        r = subprocess.run([args.torch_python, oracle, P, "--images", images, "--runs", str(args.runs),
                            "--autocast", mode, "--out", out], capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(r.stderr)
        timing = json.loads(r.stdout.strip().splitlines()[-1])
        json.dump(timing, open(out + ".timing", "w"))
    timing = json.load(open(out + ".timing"))
    ref[mode] = (timing, {c["image"]: c for c in json.load(open(out))["cases"]})
captions = json.load(open(os.path.join(P, "datastore", "captions.json")))

print("| run | retrieve | encode | generate | per image | retrieved equal to ref fp32 | generated ids equal | peak anon memory |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
base = ref["off"][1]
for mode, (t, cases) in ref.items():
    same_r = sum(cases[n]["retrieved_ids"] == base[n]["retrieved_ids"] for n in names)
    same_g = sum(cases[n]["generated_ids"] == base[n]["generated_ids"] for n in names)
    print(f"| reference, {'fp32' if mode == 'off' else 'bf16 autocast'} | {t['retrieve_s']:.2f} s | {t['encode_s']:.3f} s "
          f"| {t['generate_s']:.2f} s | **{t['total_s']:.2f} s** | {same_r} of 11 | {same_g} of 11 | – |")


def peak_anon(pid, box, stop):
    while not stop.is_set():
        try:
            for line in open(f"/proc/{pid}/status"):
                if line.startswith("RssAnon:"):
                    box[0] = max(box[0], int(line.split()[1]))
        except OSError:
            return
        time.sleep(0.02)


# 2. smallcap, whole process
exe = args.smallcap or os.path.join(repo, "target", "release", "smallcap")
tokenizer = os.path.join(P, "tokenizer")
if not os.path.isdir(tokenizer):
    os.makedirs(tokenizer)
    bpe = os.environ["GPT2_BPE"]
    os.symlink(os.path.join(bpe, "encoder.json"), os.path.join(tokenizer, "vocab.json"))
    os.symlink(os.path.join(bpe, "vocab.bpe"), os.path.join(tokenizer, "merges.txt"))
for cfg in args.configs.split(","):
    enc, dec, batch = cfg.split(":")
    cmd = [exe, "caption", "--model", os.path.join(P, "model"), "--tokenizer", tokenizer,
           "--datastore", f"{os.path.join(P, 'datastore', 'index')},captions={os.path.join(P, 'datastore', 'captions.json')}",
           "--retrieval-encoder", os.path.join(P, "rn50x64.pt"), "--early-stopping",
           "--encoder-precision", enc, "--decoder-weights", dec, "--batch-size", batch, "--images", images]
    walls, box = [], [0]
    for _ in range(args.runs):
        stop = threading.Event()
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=dict(os.environ, HF_HUB_OFFLINE="1"))
        th = threading.Thread(target=peak_anon, args=(proc.pid, box, stop))
        th.start()
        out, err = proc.communicate()
        walls.append(time.perf_counter() - t0)
        stop.set()
        th.join()
        if proc.returncode != 0:
            sys.exit(err)
    lines = [json.loads(l) for l in out.splitlines()]
    by = {os.path.basename(l["image"]): l for l in lines}
    same_r = sum(by[n]["retrieved_captions"] == [captions[j] for j in base[n]["retrieved_ids"]] for n in names)
    same_g = sum(by[n]["generated_ids"] == base[n]["generated_ids"] for n in names)
    per = min(walls) / len(names)
    print(f"| smallcap `--encoder-precision {enc} --decoder-weights {dec} --batch-size {batch}` (whole process) "
          f"| | | | **{per:.2f} s** | {same_r} of 11 | {same_g} of 11 | {box[0] / 1024:.0f} MiB |")
