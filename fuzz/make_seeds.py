"""Writes the committed seed corpus (fuzz/seeds/<target>/): small valid inputs of every format a
target reads, made by the tools that define the formats (torch.save / torch.jit.save, the
reference's SmallCap model from transformers 4.21.1, safetensors, FAISS, Pillow) and by
`smallcap datastore import` for our store folder. Run once by hand; the fuzzers grow their own
corpora from these (in fuzz/corpus/, not committed).

  SMALLCAP_REF=<checkout of RitaRamo/smallcap> CLIP_REF=<checkout of openai/CLIP> \
  SMALLCAP_BIN=target/release/smallcap python fuzz/make_seeds.py

with a Python that has torch, transformers==4.21.1, safetensors, faiss-cpu and Pillow 9.3.
"""
import io, json, os, subprocess, sys, tempfile, zipfile

import faiss
import numpy as np
import torch
from PIL import Image
from safetensors.torch import save as st_save

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = os.path.join(HERE, "seeds")
SEP = b"\n%%SMALLCAP-FUZZ-FILE%%\n"  # smallcap_fuzz::SEPARATOR
torch.manual_seed(0)
np.random.seed(0)


def put(target, name, data):
    d = os.path.join(SEEDS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def saved(obj):
    b = io.BytesIO()
    torch.save(obj, b)
    return b.getvalue()


def jit_saved(module):
    b = io.BytesIO()
    torch.jit.save(torch.jit.script(module), b)
    return b.getvalue()


# ------------------------------------------------------------------ checkpoint
class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3, 2)
        self.ln = torch.nn.LayerNorm(2)
        self.register_buffer("scale", torch.tensor([0.5]))

    def forward(self, x):
        return self.ln(self.fc(x)) * self.scale


small = Small()
put("checkpoint", "state_dict", saved(small.state_dict()))
put("checkpoint", "nested", saved({"state_dict": small.state_dict(), "epoch": 3}))
put("checkpoint", "dtypes", saved({"h": torch.ones(2, 2, dtype=torch.float16),
                                   "b": torch.ones(3, dtype=torch.bfloat16),
                                   "i": torch.arange(4), "view": torch.arange(6.0)[2:]}))
put("checkpoint", "torchscript", jit_saved(small))
# the pickles alone (the target packs them with storages, so that mutations pass the zip's CRCs)
for name in ["state_dict", "nested", "dtypes", "torchscript"]:
    with zipfile.ZipFile(os.path.join(SEEDS, "checkpoint", name)) as z:
        put("checkpoint", name + ".pkl", z.read(next(n for n in z.namelist() if n.endswith("/data.pkl"))))

# ------------------------------------------------------------------ model_load
sys.path.insert(0, os.environ["SMALLCAP_REF"])
sys.path.insert(0, os.environ["CLIP_REF"])
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, CLIPConfig  # noqa: E402
from src.vision_encoder_decoder import SmallCap, SmallCapConfig  # noqa: E402
from src.gpt2 import ThisGPT2Config, ThisGPT2LMHeadModel  # noqa: E402

AutoConfig.register("this_gpt2", ThisGPT2Config)
AutoModel.register(ThisGPT2Config, ThisGPT2LMHeadModel)
AutoModelForCausalLM.register(ThisGPT2Config, ThisGPT2LMHeadModel)
AutoConfig.register("smallcap", SmallCapConfig)
AutoModel.register(SmallCapConfig, SmallCap)

clip_cfg = CLIPConfig(
    text_config_dict=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2),
    vision_config_dict=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                            image_size=32, patch_size=16),
    projection_dim=8)
dec_cfg = ThisGPT2Config(vocab_size=64, n_positions=32, n_embd=8, n_layer=1, n_head=2, add_cross_attention=True,
                         is_decoder=True, cross_attention_reduce_factor=4, encoder_hidden_size=8)
cfg = SmallCapConfig.from_encoder_decoder_configs(clip_cfg, dec_cfg)
model = SmallCap(config=cfg)
with tempfile.TemporaryDirectory() as d:
    model.save_pretrained(d)
    config = open(os.path.join(d, "config.json"), "rb").read()
    state = torch.load(os.path.join(d, "pytorch_model.bin"))
    pickle = open(os.path.join(d, "pytorch_model.bin"), "rb").read()
# safetensors cannot hold shared storage: each tensor is saved on its own
tensors = {k: v.clone().contiguous() for k, v in state.items()}
put("model_load", "safetensors", config + SEP + st_save(tensors))
put("model_load", "pickle", config + SEP + pickle)

# ------------------------------------------------------------------ clip_archive
import clip.model  # noqa: E402

clip_model = clip.model.CLIP(embed_dim=8, image_resolution=32, vision_layers=(1, 1, 1, 1), vision_width=8,
                             vision_patch_size=None, context_length=8, vocab_size=64, transformer_width=8,
                             transformer_heads=1, transformer_layers=1)
clip_model.eval()
clip_model.half()  # as OpenAI publishes them
dims = json.dumps({"embed_dim": 8, "image_resolution": 32, "vision_layers": [1, 1, 1, 1], "vision_width": 8,
                   "vision_patch_size": None, "context_length": 8, "vocab_size": 64, "transformer_width": 8,
                   "transformer_heads": 1, "transformer_layers": 1}).encode()
put("clip_archive", "resnet_state_dict", saved(clip_model.state_dict()))
put("clip_archive", "resnet_with_dims", saved(clip_model.state_dict()) + SEP + dims)
put("clip_archive", "resnet_torchscript",
    (lambda b: (torch.jit.save(torch.jit.trace(clip_model.float(), (torch.zeros(1, 3, 32, 32),
                                                                    torch.zeros(1, 8, dtype=torch.long))), b),
                b.getvalue())[1])(io.BytesIO()))
vit = clip.model.CLIP(embed_dim=8, image_resolution=32, vision_layers=1, vision_width=64, vision_patch_size=16,
                      context_length=8, vocab_size=64, transformer_width=8, transformer_heads=1, transformer_layers=1)
put("clip_archive", "vit_state_dict", saved(vit.half().state_dict()))

# ------------------------------------------------------------------ faiss_index
x = np.random.randn(6, 4).astype("float32")
x /= np.linalg.norm(x, axis=1, keepdims=True)
with tempfile.TemporaryDirectory() as d:
    flat = faiss.IndexFlatIP(4)
    flat.add(x)
    faiss.write_index(flat, os.path.join(d, "flat"))
    put("faiss_index", "flat_ip", open(os.path.join(d, "flat"), "rb").read())
    l2 = faiss.IndexFlatL2(4)
    l2.add(x)
    faiss.write_index(l2, os.path.join(d, "l2"))
    put("faiss_index", "flat_l2", open(os.path.join(d, "l2"), "rb").read())
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(4), 4, 2, faiss.METRIC_INNER_PRODUCT)
    ivf.train(x)
    ivf.add(x)
    faiss.write_index(ivf, os.path.join(d, "ivf"))
    put("faiss_index", "ivf_flat", open(os.path.join(d, "ivf"), "rb").read())

    # -------------------------------------------------------------- datastore
    caps = os.path.join(d, "flat_captions.json")
    json.dump(["a dog", "a cat on a mat", "two birds", "a red bus", "snow", "a boat"], open(caps, "w"))
    store = os.path.join(d, "store")
    subprocess.run([os.environ["SMALLCAP_BIN"], "datastore", "import", "--index", os.path.join(d, "flat"),
                    "--captions", caps, "--out", store], check=True)
    files = ["manifest.json", "embeddings.bin", "captions.jsonl", "captions.idx"]
    parts = [open(os.path.join(store, f), "rb").read() for f in files]
    put("datastore", "flat", SEP.join(parts))
    # the approximate index: FAISS's IVF file over the store's rows, and its record
    manifest = json.loads(parts[0])
    info = {"kind": "faiss-ivf-flat", "embeddings_sha256": manifest["embeddings_sha256"],
            "params": {"nlist": 2, "nprobe": 1, "niter": 25, "max_points_per_centroid": 256, "seed": 1234}}
    parts += [json.dumps(info).encode(), open(os.path.join(d, "ivf"), "rb").read()]
    put("datastore", "with_ivf", SEP.join(parts))

# ------------------------------------------------------------------ image
rgb = Image.fromarray((np.random.rand(6, 8, 3) * 255).astype("uint8"), "RGB")


def img(fmt, im, **kw):
    b = io.BytesIO()
    im.save(b, fmt, **kw)
    return b.getvalue()


put("image", "rgb.png", img("PNG", rgb))
put("image", "l.png", img("PNG", rgb.convert("L")))
put("image", "p.png", img("PNG", rgb.convert("P")))
put("image", "rgba.png", img("PNG", rgb.convert("RGBA")))
put("image", "i16.png", img("PNG", rgb.convert("I").point(lambda v: v * 200)))
put("image", "la.png", img("PNG", rgb.convert("LA")))
put("image", "baseline.jpg", img("JPEG", rgb, quality=80))
put("image", "progressive.jpg", img("JPEG", rgb, quality=80, progressive=True))
put("image", "gray.jpg", img("JPEG", rgb.convert("L")))
put("image", "cmyk.jpg", img("JPEG", rgb.convert("CMYK")))
put("image", "subsampled.jpg", img("JPEG", rgb, subsampling=2))
put("image", "rgb.gif", img("GIF", rgb))
put("image", "lossy.webp", img("WEBP", rgb, quality=70))
put("image", "lossless.webp", img("WEBP", rgb, lossless=True))
put("image", "rgb.bmp", img("BMP", rgb))
put("image", "p.bmp", img("BMP", rgb.convert("P")))
put("image", "rgb.tiff", img("TIFF", rgb))
put("image", "lzw.tiff", img("TIFF", rgb, compression="tiff_lzw"))
put("image", "deflate.tiff", img("TIFF", rgb.convert("L"), compression="tiff_adobe_deflate"))

# ------------------------------------------------------------------ captions
put("captions", "text", b"a dog on a couch\na cat\r\ntwo birds in a tree\n")
put("captions", "json_list", json.dumps(["a dog", "a cat"]).encode())
put("captions", "json_keyed", json.dumps({"0": "a dog", "1": "a cat"}).encode())
put("captions", "coco", json.dumps({
    "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
    "annotations": [{"image_id": 42, "id": 1, "caption": "A dog."}, {"image_id": 42, "id": 2, "caption": "A pet"}]}).encode())
put("captions", "karpathy", json.dumps({"images": [
    {"cocoid": 42, "filename": "COCO_val2014_000000000042.jpg", "filepath": "val2014", "split": "train",
     "sentences": [{"tokens": ["a", "dog"], "raw": "A dog."}]},
    {"cocoid": 7, "filename": "x.jpg", "split": "test", "sentences": [{"tokens": ["a", "cat"], "raw": "A cat"}]}]}).encode())
put("captions", "retrieved", json.dumps({"42": ["a dog", "a pet dog"], "7": ["a cat"]}).encode())
put("captions", "predictions", json.dumps([{"image_id": 42, "caption": "a dog"}]).encode())

# ------------------------------------------------------------------ http
png = img("PNG", rgb.resize((32, 32)))


def request(method, path, body=b"", headers=()):
    head = [f"{method} {path} HTTP/1.1", "Host: localhost"] + list(headers)
    if body or method == "POST":
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def multipart(fields):
    boundary = "fuzzboundary"
    out = b""
    for name, value, filename, ctype in fields:
        out += f"--{boundary}\r\n".encode()
        disp = f'Content-Disposition: form-data; name="{name}"'
        if filename:
            disp += f'; filename="{filename}"'
        out += disp.encode() + b"\r\n"
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + value + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return out, f"Content-Type: multipart/form-data; boundary={boundary}"


put("http", "healthz", request("GET", "/healthz"))
put("http", "datastores", request("GET", "/v1/datastores"))
put("http", "openapi", request("GET", "/openapi.json"))
put("http", "metrics", request("GET", "/metrics"))
put("http", "raw_png", request("POST", "/v1/captions?k=2&beams=2&max_new_tokens=4", png,
                               ["Content-Type: image/png"]))
body, ct = multipart([("image", png, "a.png", "image/png"), ("k", b"3", None, None),
                      ("datastore", b"coco", None, None)])
put("http", "multipart", request("POST", "/v1/captions", body, [ct]))
body, ct = multipart([("captions", b'["a dog", "a cat"]', None, None), ("image", png, "a.png", "image/png")])
put("http", "multipart_captions", request("POST", "/v1/captions", body, [ct]))
body, ct = multipart([("images", png, "a.png", "image/png"), ("images", png, "b.png", "image/png"),
                      ("beams", b"1", None, None)])
put("http", "batch", request("POST", "/v1/captions/batch", body, [ct]))
put("http", "retrieve", request("POST", "/v1/retrieve", json.dumps({"texts": ["a dog", "a cat"], "k": 2}).encode(),
                                ["Content-Type: application/json"]))
put("http", "retrieve_image", request("POST", "/v1/retrieve?k=2", png, ["Content-Type: image/png"]))
print("seeds written to", SEEDS)
