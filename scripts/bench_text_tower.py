"""Datastore builds: the RN50x64 text tower, the reference (OpenAI CLIP in torch) and this project in
one run.

  CLIP_REF=<openai/CLIP checkout> python scripts/bench_text_tower.py PERFDIR [--n 512] [--batch 256]

Needs torch and ftfy. Writes PERFDIR/rn50x64.pt once: an OpenAI CLIP RN50x64 (`clip.model.CLIP`
with RN50x64's sizes: text tower 1024 wide, 12 layers, 16 heads, context 77; the image tower is
built too, since the project loads whole CLIP files) with random weights, as a state dict. Then:
1. the reference: `clip.tokenize` + `model.encode_text` of N captions (the fixture datastore's 588
   COCO-style captions; past them, each further round worded differently around them, so that
   all N differ) in batches, fp32 and under `torch.autocast("cpu", bfloat16)`,
   with torch threads = cores; captions per second;
2. this project: `target/release/smallcap datastore build --captions … --encoder PERFDIR/rn50x64.pt
   --encoder-precision P` (at its default batch size unless `--project-batch`) of the same
   captions for P in `--precisions` (wall time, minus a build of one caption for the load); and
   the largest difference between its stored rows and the reference's normalised fp32 features,
   and whether every caption's top-4 among the others agrees. It also prints how many tokens the project's prefix trees compute: in each
   pack of a batch's sorted captions, the distinct openings (the start token, a shared "a photo
   of", once).
"""
import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

ap = argparse.ArgumentParser()
ap.add_argument("perfdir")
ap.add_argument("--n", type=int, default=512)
ap.add_argument("--batch", type=int, default=256, help="the reference's batch size")
ap.add_argument("--project-batch", type=int, help="this project's --batch-size (default: its own default)")
ap.add_argument("--precisions", default="f32,bf16", help="this project's --encoder-precision values")
args = ap.parse_args()
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# clip/model.py and clip/simple_tokenizer.py stand alone (the package's __init__ needs torchvision).
import importlib.util  # noqa: E402


def _module(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(os.environ["CLIP_REF"], "clip", f"{name}.py"))
    m = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(m)
    return m


CLIP = _module("model").CLIP
_tokenizer = _module("simple_tokenizer").SimpleTokenizer()


def tokenize(texts, context_length=77, truncate=True):
    """`clip.tokenize` (clip/clip.py) without its torchvision import."""
    sot, eot = _tokenizer.encoder["<|startoftext|>"], _tokenizer.encoder["<|endoftext|>"]
    result = torch.zeros(len(texts), context_length, dtype=torch.int)
    for i, text in enumerate(texts):
        t = [sot] + _tokenizer.encode(text) + [eot]
        if len(t) > context_length:
            t = t[:context_length]
            t[-1] = eot
        result[i, :len(t)] = torch.tensor(t)
    return result

torch.set_num_threads(os.cpu_count())
os.makedirs(args.perfdir, exist_ok=True)
weights = os.path.join(args.perfdir, "rn50x64.pt")
model = CLIP(embed_dim=1024, image_resolution=448, vision_layers=(3, 15, 36, 10), vision_width=128,
             vision_patch_size=None, context_length=77, vocab_size=49408, transformer_width=1024,
             transformer_heads=16, transformer_layers=12)
if os.path.isfile(weights):
    model.load_state_dict(torch.load(weights, map_location="cpu"))
else:
    torch.manual_seed(7)
    torch.save(model.state_dict(), weights)
model.eval()

caps = json.load(open(os.path.join(repo, "tests/fixtures/smallcap-tiny/retrieval/datastore_captions.json")))
# Past the fixture's 588 captions, each round of them gets its own wording around the caption, so
# that all N differ (copies would tie in the top-4 comparison below) and lengths stay COCO-like.
WORDINGS = [("", ""), ("a photo of ", ""), ("", " in the picture"), ("there is ", ""),
             ("", " on a sunny day"), ("an image of ", ""), ("", " seen from above"), ("here ", " again"),
             ("", " at night"), ("a close up of ", ""), ("", " in the city"), ("a view of ", ""),
             ("", " near the water"), ("a snapshot of ", ""), ("", " during the day"), ("an old photo of ", ""),
             ("", " in black and white"), ("a picture of ", ""), ("", " outside"), ("a scene with ", "")]


def caption(i):
    pre, post = WORDINGS[(i // len(caps)) % len(WORDINGS)]
    base = caps[i % len(caps)].rstrip(" .")
    return pre + (base[0].lower() + base[1:] if pre else base) + post


texts = [caption(i) for i in range(args.n)]
print(json.dumps({"distinct_captions": len(set(texts))}))
captions_file = os.path.join(args.perfdir, f"captions_{args.n}.json")
json.dump(texts, open(captions_file, "w"))
tokens = tokenize(texts, truncate=True)
print(json.dumps({"captions": args.n, "mean_tokens_with_sot_eot": float((tokens != 0).sum(1).float().mean())}))
exe = os.path.join(repo, "target/release/smallcap")
if args.project_batch is None:
    usage = subprocess.run([exe, "datastore", "build", "--help"], capture_output=True, text=True, check=True).stdout
    args.project_batch = int(re.search(r"--batch-size[^\[]*\[default: (\d+)\]", usage).group(1))
# The tokens the project computes: each batch's captions (up to the EOT, the arg-max id) sorted and
# packed 256 at a time (`clip_text::PACKED_ROWS`), the tokens that begin several captions of a pack
# alike counted once.
openings = 0
for i in range(0, args.n, args.project_batch):
    batch = sorted(row[:row.index(max(row)) + 1] for row in tokens[i:i + args.project_batch].tolist())
    for j in range(0, len(batch), 256):
        openings += len({tuple(row[:k + 1]) for row in batch[j:j + 256] for k in range(len(row))})
print(json.dumps({"project_batch": args.project_batch, "tokens_up_to_eot": int((tokens != 0).sum()),
                  "tokens_computed": openings}))


def reference(autocast):
    feats = []
    t = time.perf_counter()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for i in range(0, args.n, args.batch):
            feats.append(model.encode_text(tokens[i:i + args.batch]).float())
    dt = time.perf_counter() - t
    f = torch.cat(feats)
    return dt, (f / f.norm(dim=1, keepdim=True)).numpy()


dt32, ref = reference(False)
print(json.dumps({"reference": "fp32", "seconds": round(dt32, 2), "captions_per_s": round(args.n / dt32, 1)}))
dt16, _ = reference(True)
print(json.dumps({"reference": "autocast bf16", "seconds": round(dt16, 2), "captions_per_s": round(args.n / dt16, 1)}))


def build(captions, out, batch, precision):
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run([exe, "datastore", "build", "--captions", captions, "--encoder", weights, "--out", out,
                    "--encoder-precision", precision] + (["--batch-size", str(batch)] if batch else []),
                   check=True, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


one = os.path.join(args.perfdir, "one.json")
json.dump(texts[:1], open(one, "w"))
for precision in args.precisions.split(","):
    load = build(one, os.path.join(args.perfdir, "store-one"), 1, precision)
    wall = build(captions_file, os.path.join(args.perfdir, "store"), args.project_batch, precision)
    ours = np.fromfile(os.path.join(args.perfdir, "store", "embeddings.bin"), dtype="<f4").reshape(args.n, -1)
    diff = float(np.abs(ours - ref).max())
    sims_ref, sims_ours = ref @ ref.T, ours @ ours.T
    np.fill_diagonal(sims_ref, -2)
    np.fill_diagonal(sims_ours, -2)
    same = sum(set(np.argsort(-sims_ref[i])[:4]) == set(np.argsort(-sims_ours[i])[:4]) for i in range(args.n))
    print(json.dumps({"smallcap": f"datastore build, {precision}", "wall_s": round(wall, 2), "load_s": round(load, 2),
                      "captions_per_s": round(args.n / (wall - load), 1), "max_abs_diff_vs_reference": diff,
                      "top4_equal": f"{same} of {args.n}"}))
