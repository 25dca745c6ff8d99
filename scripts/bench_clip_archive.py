"""Peak memory and load time of an RN50x64 TorchScript fp16 archive, smallcap beside `clip.load`.

Writes OUT/RN50x64.pt once: OpenAI CLIP's RN50x64 (`clip.model.CLIP` at RN50x64's sizes, random
weights), converted to fp16 (`convert_weights`), traced and saved with `torch.jit.save`, as OpenAI
ships its files (the real one is 1.26 GB). Then, each in a fresh process, prints the peak resident
memory (ru_maxrss of the child) and wall time of:
  - the reference: `clip.load(archive, device="cpu")` (jit=False, fp32 on CPU) and one query:
    `encode_image(preprocess(img))`;
  - smallcap: `smallcap retrieve --encoder archive --datastore STORE --image IMG`;
  - with `--model` and `--store`: the whole pipeline, `smallcap caption --model M --datastore STORE
    --retrieval-encoder archive IMG`.

Needs torch and a checkout of openai/CLIP in $CLIP_REF (never committed here):
  python scripts/bench_clip_archive.py OUT --image IMG --store STORE [--model M --tokenizer T]
"""
import argparse
import json
import os
import subprocess
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("out")
p.add_argument("--image", required=True)
p.add_argument("--store", required=True, help="a datastore spec of dimension 1024")
p.add_argument("--model", help="a full-size SmallCap checkpoint folder, for the pipeline row")
p.add_argument("--tokenizer")
p.add_argument("--smallcap", default="target/release/smallcap")
p.add_argument("--child", help=argparse.SUPPRESS)
args = p.parse_args()

if args.child == "reference":
    sys.path.insert(0, os.environ["CLIP_REF"])
    import torch
    from PIL import Image
    from clip import clip

    torch.set_num_threads(os.cpu_count())
    t = time.time()
    model, preprocess = clip.load(os.path.join(args.out, "RN50x64.pt"), device="cpu", jit=False)
    with torch.no_grad():
        q = model.encode_image(preprocess(Image.open(args.image).convert("RGB")).unsqueeze(0))
    assert q.shape == (1, 1024)
    print(json.dumps({"wall_s": time.time() - t}))
    sys.exit(0)

archive = os.path.join(args.out, "RN50x64.pt")
if not os.path.exists(archive):
    sys.path.insert(0, os.environ["CLIP_REF"])
    import torch
    from clip import model as clip_model, clip

    os.makedirs(args.out, exist_ok=True)
    torch.manual_seed(0)
    net = clip_model.CLIP(1024, 448, (3, 15, 36, 10), 128, None, 77, 49408, 1024, 16, 12)
    clip_model.convert_weights(net)
    net.eval()
    example = (torch.zeros(1, 3, 448, 448, dtype=torch.float16), clip.tokenize(["a photo"]))
    traced = torch.jit.trace(net, example, check_trace=False)
    traced.save(archive + ".tmp")
    os.replace(archive + ".tmp", archive)
    del net, traced


print(f"archive: {os.path.getsize(archive) / 1e9:.2f} GB, {os.cpu_count()} threads")
print("| run | wall (load + 1 query) | peak resident memory |")
print("|---|---|---|")
# Each row runs under a fresh helper process, whose RUSAGE_CHILDREN maxrss is that one command's peak.
rows = [
    ("smallcap retrieve --encoder RN50x64.pt", [args.smallcap, "retrieve", "--encoder", archive,
                                                 "--datastore", args.store, "--k", "4", "--image", args.image]),
    ("reference clip.load + encode_image", [sys.executable, __file__, args.out, "--image", args.image,
                                            "--store", args.store, "--child", "reference"]),
]
if args.model:
    cmd = [args.smallcap, "caption", "--model", args.model, "--datastore", args.store,
           "--retrieval-encoder", archive, args.image]
    if args.tokenizer:
        cmd += ["--tokenizer", args.tokenizer]
    rows.append(("smallcap caption (whole pipeline, 565k store)", cmd))
for name, cmd in rows:
    helper = [sys.executable, "-c",
              "import resource,subprocess,sys,json,time;t=time.time();"
              "r=subprocess.run(sys.argv[1:],capture_output=True,text=True);"
              "sys.stderr.write(r.stderr[-2000:]) if r.returncode else None;"
              "print(json.dumps({'rc':r.returncode,'wall':time.time()-t,"
              "'peak':resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss/1024}))"] + cmd
    r = subprocess.run(helper, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    m = json.loads(r.stdout.strip().splitlines()[-1])
    if m["rc"] != 0:
        sys.exit(f"{name} failed: {r.stderr}")
    print(f"| {name} | {m['wall']:.1f} s | {m['peak']:.0f} MiB |")
