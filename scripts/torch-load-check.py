"""Loads a checkpoint written by `smallcap train` with real PyTorch and the reference code.

    python scripts/torch-load-check.py CHECKPOINT_DIR SMALLCAP_REFERENCE_CHECKOUT

Needs torch and transformers 4.21.1 (the reference's environment; see ../shared/oracle/README).
Checks that `torch.load` (also with `weights_only=True`) reads `pytorch_model.bin`, that tied
tensors share one storage, that every weight equals the one in `model.safetensors`, and that the
reference's `SmallCap.from_pretrained` finds every tensor it has (buffers included) in the
checkpoint, with the same values.
"""
import sys

import torch
from safetensors.torch import load_file

ckpt, reference = sys.argv[1], sys.argv[2]
sd = torch.load(f"{ckpt}/pytorch_model.bin", map_location="cpu")
torch.load(f"{ckpt}/pytorch_model.bin", map_location="cpu", weights_only=True)
st = load_file(f"{ckpt}/model.safetensors")
# The pickle also holds the reference's buffers (masks, position ids); the weights are the same.
assert set(st) <= set(sd), sorted(set(st) - set(sd))
for name, tensor in st.items():
    assert torch.equal(sd[name], tensor), name
if "decoder.lm_head.weight" in sd:
    tied = sd["decoder.lm_head.weight"].data_ptr() == sd["decoder.transformer.wte.weight"].data_ptr()
    print("lm_head shares wte's storage:", tied)

sys.path.insert(0, reference)
from src.gpt2 import ThisGPT2Config, ThisGPT2LMHeadModel  # noqa: E402
from src.vision_encoder_decoder import SmallCap, SmallCapConfig  # noqa: E402
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

AutoConfig.register("this_gpt2", ThisGPT2Config)
AutoModel.register(ThisGPT2Config, ThisGPT2LMHeadModel)
AutoModelForCausalLM.register(ThisGPT2Config, ThisGPT2LMHeadModel)
AutoConfig.register("smallcap", SmallCapConfig)
AutoModel.register(SmallCapConfig, SmallCap)
model, info = AutoModel.from_pretrained(ckpt, output_loading_info=True)
# Only buffers (attention masks, position ids) may be missing: the model makes them itself.
buffers = {name for name, _ in model.named_buffers()}
assert set(info["missing_keys"]) <= buffers and not info["unexpected_keys"], info
assert not info["missing_keys"], info
loaded = model.state_dict()
for name, tensor in sd.items():
    assert torch.equal(loaded[name], tensor), name
print(f"{ckpt}: torch {torch.__version__} and the reference load all {len(sd)} tensors")
