"""Captioning speed of an opt-125m-sized SmallCapOPT, the reference and this project in one run.

  SMALLCAP_REF=<RitaRamo/smallcap checkout> python scripts/bench_opt_reference.py PERFDIR \
      [--tokenizer ../shared/fixtures/opt-tiny/tokenizer] [--runs 3] [--autocast bf16]

Needs torch and transformers 4.21.1 (the slow GPT2Tokenizer that OPT uses in 4.21.1 needs no
`tokenizers` package, so `pip install --no-deps transformers==4.21.1` beside torch is enough).

Writes PERFDIR/model (made once): a SmallCap with the reference's OPT decoder (src/opt.py) as
`SmallCap(config=...)` builds it: CLIP ViT-B/32's vision tower (CLIPConfig's defaults),
opt-125m's decoder (768 wide, 12 pre-LN layers, 12 heads, ffn 3072, 2048 positions, vocabulary
50272), reduce factor 4, random weights scaled by 3 as perf_reference.py does, the LM-head rows
past the tokenizer zeroed (OPT's padding rows). It is reloaded with `AutoModel.from_pretrained`,
as infer.py loads a checkpoint.

For every image of tests/fixtures/smallcap-tiny/images and its 4 captions of
tests/fixtures/smallcap-tiny/retrieved_caps.json it times, per image, the reference's encode
(CLIPFeatureExtractor + vision tower) and generate (infer.py's settings: 3 beams, early stopping,
25 new tokens, length penalty 0), with torch threads = cores; writes PERFDIR/cases.json (image,
prompt_ids, generated_ids) and prints the medians; then runs this project's
`target/release/bench --perf-dir PERFDIR --tokenizer TOKENIZER`, which times the same work and
checks every generated id sequence against the reference's, and prints its table.
"""
import argparse, contextlib, json, os, statistics, subprocess, sys, time

import torch
from PIL import Image

ap = argparse.ArgumentParser()
ap.add_argument("perfdir")
ap.add_argument("--tokenizer", default="../shared/fixtures/opt-tiny/tokenizer")
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--autocast", choices=["off", "bf16"], default="off")
ap.add_argument("--skip-ours", action="store_true", help="time the reference only")
args = ap.parse_args()
repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
images = os.path.join(repo, "tests/fixtures/smallcap-tiny/images")
retrieved = json.load(open(os.path.join(repo, "tests/fixtures/smallcap-tiny/retrieved_caps.json")))
torch.set_num_threads(os.cpu_count())
sys.path.insert(0, os.environ["SMALLCAP_REF"])
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, CLIPConfig, CLIPFeatureExtractor, GPT2Tokenizer
from transformers.modeling_outputs import BaseModelOutput
from src.vision_encoder_decoder import SmallCap, SmallCapConfig
from src.opt import ThisOPTConfig, ThisOPTForCausalLM
from src.utils import prep_strings

AutoConfig.register("this_opt", ThisOPTConfig); AutoModel.register(ThisOPTConfig, ThisOPTForCausalLM)
AutoModelForCausalLM.register(ThisOPTConfig, ThisOPTForCausalLM)
AutoConfig.register("smallcap", SmallCapConfig); AutoModel.register(SmallCapConfig, SmallCap)

# The slow GPT2Tokenizer as transformers 4.21.1 builds it for OPT (add_bos_token, fairseq's specials),
# constructed directly (from_pretrained would import the fast tokenizers too), its special tokens set
# as plain strings (4.21.1's AddedToken does not print as its content under Python 3.11).
tok = GPT2Tokenizer(os.path.join(args.tokenizer, "vocab.json"), os.path.join(args.tokenizer, "merges.txt"),
                    add_bos_token=True)
for key, value in json.load(open(os.path.join(args.tokenizer, "special_tokens_map.json"))).items():
    setattr(tok, key, value)
tok.pad_token = "!"; tok.eos_token = "."  # infer.py / train.py
P = args.perfdir
model_dir = os.path.join(P, "model")
if not os.path.isfile(os.path.join(model_dir, "config.json")):
    os.makedirs(P, exist_ok=True)
    torch.manual_seed(1234)
    dec_cfg = ThisOPTConfig(hidden_size=768, num_hidden_layers=12, ffn_dim=3072, num_attention_heads=12,
                            max_position_embeddings=2048, word_embed_proj_dim=768, do_layer_norm_before=True,
                            layer_norm_elementwise_affine=True, add_cross_attention=True, is_decoder=True,
                            cross_attention_reduce_factor=4, vocab_size=50272, pad_token_id=1, bos_token_id=2,
                            eos_token_id=2, decoder_start_token_id=2)
    cfg = SmallCapConfig.from_encoder_decoder_configs(CLIPConfig(), dec_cfg)
    m = SmallCap(config=cfg)
    with torch.no_grad():
        for n, p in m.named_parameters():
            if p.dim() >= 2:
                p.mul_(3.0)
        m.decoder.lm_head.weight[len(tok):].zero_()
    m.config.vocab_size = 50272; m.config.decoder_start_token_id = None
    m.config.pad_token_id = tok.pad_token_id; m.config.eos_token_id = tok.eos_token_id
    m.config.k = 4; m.config.retrieval_encoder = "RN50x64"; m.config.max_length = 25; m.config.rag = True
    m.save_pretrained(model_dir)
model = AutoModel.from_pretrained(model_dir)
model.eval()
fe = CLIPFeatureExtractor(do_resize=True, size=224, resample=Image.BICUBIC, do_center_crop=True, crop_size=224,
                          do_normalize=True, image_mean=[0.48145466, 0.4578275, 0.40821073],
                          image_std=[0.26862954, 0.26130258, 0.27577711])
template = open(os.path.join(os.environ["SMALLCAP_REF"], "src", "template.txt")).read().strip() + " "
gen = {"max_new_tokens": 25, "no_repeat_ngram_size": 0, "length_penalty": 0.0, "num_beams": 3,
       "early_stopping": True, "eos_token_id": tok.eos_token_id}
amp = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.autocast == "bf16" else contextlib.nullcontext
names = sorted(os.listdir(images))
t_enc, t_gen, out = [], [], []
for r in range(args.runs):
    for name in names:
        image = Image.open(os.path.join(images, name)).convert("RGB")
        t0 = time.perf_counter()
        pv = fe(image, return_tensors="pt").pixel_values
        with torch.no_grad(), amp():
            enc = model.encoder(pixel_values=pv)
        t1 = time.perf_counter()
        ids = prep_strings("", tok, template=template, retrieved_caps=retrieved[name], k=4, is_test=True)
        with torch.no_grad(), amp():
            pred = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=enc.last_hidden_state),
                                  decoder_input_ids=torch.tensor([ids]), **gen)
        t2 = time.perf_counter()
        t_enc.append(t1 - t0); t_gen.append(t2 - t1)
        if r == 0:
            out.append({"image": name, "prompt_ids": ids, "generated_ids": pred[0].tolist()[len(ids):]})
if args.autocast == "off":
    json.dump({"cases": out, "generation": gen}, open(os.path.join(P, "cases.json"), "w"), indent=1)
print(json.dumps({"reference": "SmallCapOPT, opt-125m size", "encode_s": statistics.median(t_enc),
                  "generate_s": statistics.median(t_gen),
                  "total_s": statistics.median([a + b for a, b in zip(t_enc, t_gen)]),
                  "threads": torch.get_num_threads(), "images": len(names), "runs": args.runs,
                  "autocast": args.autocast}))
if not args.skip_ours:
    sys.stdout.flush()
    subprocess.run([os.path.join(repo, "target/release/bench"), "--perf-dir", P, "--tokenizer", args.tokenizer,
                    "--images", images, "--runs", str(args.runs)], check=True)
