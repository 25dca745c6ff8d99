"""The Python package against the reference's fixture packs (tests/fixtures of the repository):
generated ids and captions of every case with given captions in every decode setting, alone and
batched; the live-retrieval pipeline cases; numpy, PIL, bytes and file inputs giving exactly what
the path gives; datastores; the metrics against pycocoevalcap's values; bad inputs; threads.
Run by scripts/test after the wheel is built into a fresh venv (`pytest python/tests`)."""

import io
import json
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import smallcap

REPO = Path(os.environ.get("SMALLCAP_REPO", Path(__file__).resolve().parents[2]))
PACK = REPO / "tests" / "fixtures" / "smallcap-tiny"
RETRIEVAL = PACK / "retrieval"
EVAL = REPO / "tests" / "fixtures" / "eval-dev"
STORE = f"{RETRIEVAL / 'datastore_index'},captions={RETRIEVAL / 'datastore_captions.json'}"

SETTINGS = {
    "beam3_early": dict(num_beams=3, early_stopping=True),
    "beam3": dict(num_beams=3, early_stopping=False),
    "greedy": dict(num_beams=1, early_stopping=False),
}


def load_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


CASES = load_json(PACK / "cases.json")["cases"]
PIPELINE = load_json(PACK / "pipeline_cases.json")["cases"]
IMAGES = sorted(p for p in (PACK / "images").iterdir() if p.suffix in (".png", ".jpg"))


def safetensors(path):
    """The f32 tensors of a safetensors file, by name (the format: a little-endian u64 header
    length, a JSON header, the data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__" or meta["dtype"] != "F32":
            continue
        start, end = meta["data_offsets"]
        out[name] = np.frombuffer(raw[8 + n + start : 8 + n + end], dtype="<f4").reshape(meta["shape"])
    return out


@pytest.fixture(scope="module")
def model():
    return smallcap.SmallCap.from_pretrained(PACK / "model", tokenizer=PACK / "tokenizer")


@pytest.fixture(scope="module")
def live():
    return smallcap.SmallCap.from_pretrained(
        PACK / "model",
        tokenizer=PACK / "tokenizer",
        datastore=STORE,
        retrieval_encoder=str(RETRIEVAL / "clip_resnet_jit_fp16.pt"),
    )


def prompt_of(case):
    if case["retrieved_captions"] is None or case["k"] == 0:
        return dict(no_retrieval=True)
    return dict(captions=case["retrieved_captions"], k=case["k"])


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_every_case_gives_the_reference_ids_and_captions(model, setting):
    for case in CASES:
        out = model.caption(PACK / case["image"], **prompt_of(case), **SETTINGS[setting])
        want = case["expected"][setting]
        assert out[0]["prompt_ids"] == case["prompt_ids"], case["id"]
        assert out[0]["generated_ids"] == want["generated_ids"], (case["id"], setting)
        assert out[0]["caption"] == want["caption"], (case["id"], setting)


def test_cases_batched_with_per_image_captions_give_the_same(model):
    given = [c for c in CASES if c["retrieved_captions"] is not None and c["k"] == 4]
    out = model.caption(
        [PACK / c["image"] for c in given], captions=[c["retrieved_captions"] for c in given]
    )
    for case, o in zip(given, out):
        assert o["generated_ids"] == case["expected"]["beam3_early"]["generated_ids"], case["id"]


def test_live_retrieval_gives_the_reference_pipeline(live):
    out = live.caption([PACK / "images" / c["image"] for c in PIPELINE])
    for case, o in zip(PIPELINE, out):
        assert o["retrieved_captions"] == case["retrieved_captions"], case["image"]
        assert o["retrieval_scores"] == pytest.approx(case["top_scores"], abs=1e-4)
        assert o["prompt_ids"] == case["prompt_ids"]
        assert o["generated_ids"] == case["generated_ids"], case["image"]
        assert o["caption"] == case["caption"]
    found = live.retrieve(images=[PACK / "images" / PIPELINE[0]["image"]], k=4)
    assert found[0]["ids"] == PIPELINE[0]["top_ids"]


@pytest.mark.parametrize("path", IMAGES, ids=lambda p: p.name)
def test_numpy_pil_bytes_and_files_give_what_the_path_gives(live, path):
    want = live.caption(path)[0]
    rgb = np.asarray(Image.open(path).convert("RGB"))
    inputs = [Image.open(path), rgb, path.read_bytes(), str(path)]
    for given in inputs:
        assert live.caption(given)[0] == want, type(given).__name__
    with open(path, "rb") as f:
        assert live.caption(f)[0] == want
    # Batched, the captions are the same; the retrieval encoder's float sums may round
    # differently in a batch (the neighbours do not change).
    for got in live.caption(inputs):
        scores = got.pop("retrieval_scores")
        assert got == {k: v for k, v in want.items() if k != "retrieval_scores"}
        assert scores == pytest.approx(want["retrieval_scores"], abs=1e-6)


def test_datastores_open_search_build_and_add(tmp_path, live):
    store = smallcap.Datastore.open(STORE)
    cases = load_json(RETRIEVAL / "cases.json")
    tensors = safetensors(RETRIEVAL / "expected_tensors.safetensors")
    assert len(store) == tensors["caption_embeddings"].shape[0]
    for entry in cases["image_cases"]:
        name = entry["image"].rsplit("/", 1)[-1]
        q = tensors[f"{name}.query_embedding"]
        hits = store.search(q, k=len(entry["top_ids"]))
        assert hits[0]["ids"] == entry["top_ids"], name
        assert hits[0]["captions"] == entry["top_captions"], name
        assert hits[0]["scores"] == pytest.approx(entry["top_scores"], abs=1e-5)
    # A new store from a list, then grown by a file of captions; its own rows find themselves.
    out = tmp_path / "store"
    built = smallcap.Datastore.build(["a cat on a mat", "a dog on a beach", "a red bus"],
                                     encoder=str(RETRIEVAL / "clip_resnet.pt"), out=out)
    assert len(built) == 3 and built.info()["count"] == 3
    more = tmp_path / "more.txt"
    more.write_text("two horses\na plate of food\n")
    grown = smallcap.Datastore.add(out, more)
    assert len(grown) == 5
    m = smallcap.SmallCap.from_pretrained(PACK / "model", tokenizer=PACK / "tokenizer",
                                          datastore={"mine": str(out)},
                                          retrieval_encoder=str(RETRIEVAL / "clip_resnet.pt"))
    assert m.datastores == ["mine"]
    found = m.retrieve(texts=["a plate of food"], k=1)
    assert found[0]["captions"] == ["a plate of food"]


def test_encoder_precision_bf16_retrieves_close_to_the_reference(tmp_path):
    """bf16 query embeddings: the scores of the reference's top-4 captions (the whole 588-caption
    store ranked) within 5e-3 of the reference's, on the pipeline's 11 images; a bad value is
    refused."""
    images = [PACK / "images" / c["image"] for c in PIPELINE]
    kw = dict(tokenizer=PACK / "tokenizer", datastore=STORE,
              retrieval_encoder=str(RETRIEVAL / "clip_resnet_jit_fp16.pt"))
    bf16_model = smallcap.SmallCap.from_pretrained(PACK / "model", encoder_precision="bf16", **kw)
    bf16 = bf16_model.retrieve(images, k=588)
    worst = 0.0
    for case, got in zip(PIPELINE, bf16):
        scores = dict(zip(got["ids"], got["scores"]))
        for i, s in zip(case["top_ids"], case["top_scores"]):
            worst = max(worst, abs(scores[i] - s))
    assert 1e-5 < worst < 5e-3
    out = bf16_model.caption(images[:2])
    assert len(out) == 2 and all(len(o["retrieved_captions"]) == 4 for o in out)
    built = smallcap.Datastore.build(["a cat on a mat", "a red bus"], encoder=str(RETRIEVAL / "clip_resnet.pt"),
                                     out=tmp_path / "s", encoder_precision="bf16")
    assert len(built) == 2
    with pytest.raises(ValueError, match="encoder precision"):
        smallcap.SmallCap.from_pretrained(PACK / "model", encoder_precision="f16", **kw)


def test_metrics_equal_pycocoevalcap():
    want = load_json(EVAL / "expected.json")["corpus"]
    got = smallcap.evaluate(EVAL / "gold.json", EVAL / "preds.json", spice=False)
    if os.environ.get("CI"):
        assert "METEOR" in got, "METEOR needs pycocoevalcap's data ($SMALLCAP_PYTHON)"
    for metric, value in got.items():
        assert value == pytest.approx(want[metric], abs=1e-9), metric
    # Python objects as well as paths.
    objects = smallcap.evaluate(load_json(EVAL / "gold.json"), load_json(EVAL / "preds.json"),
                                spice=False)
    assert objects == got


def test_the_pipeline_returns_generated_text(live):
    captioner = smallcap.pipeline("image-to-text", model=live)
    path = PACK / "images" / PIPELINE[0]["image"]
    assert captioner(path) == [{"generated_text": PIPELINE[0]["caption"]}]
    assert captioner([path, path]) == [[{"generated_text": PIPELINE[0]["caption"]}]] * 2
    with pytest.raises(ValueError, match="image-to-text"):
        smallcap.pipeline("text-generation", model=live)


def test_one_model_is_shared_by_threads(model):
    case = next(c for c in CASES if c["retrieved_captions"] is not None)
    want = case["expected"]["beam3_early"]["generated_ids"]
    active = []

    def run(_):
        active.append(threading.get_ident())
        return model.caption(PACK / case["image"], **prompt_of(case))[0]["generated_ids"]

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(run, range(8)))
    assert results == [want] * 8


def test_bad_inputs_raise_clear_exceptions(model, live):
    img = PACK / "images" / "chelsea.png"
    with pytest.raises(ValueError, match="shape"):
        model.caption(np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="shape"):
        model.caption(np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        model.caption(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(FileNotFoundError, match="no_such.png"):
        model.caption(PACK / "images" / "no_such.png")
    with pytest.raises(ValueError, match="2 lists for 1 images"):
        model.caption(img, captions=[["a"], ["b"]], k=1)
    with pytest.raises(ValueError, match="unknown datastore"):
        live.caption(img, datastore="nowhere")
    with pytest.raises(ValueError, match="k = 4 but only 2 captions"):
        model.caption(img, captions=["a cat", "a dog"], k=4)
    with pytest.raises(ValueError):
        model.caption(b"this is not an image")
    closed = io.BytesIO(img.read_bytes())
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        model.caption(closed)
    with pytest.raises(TypeError):
        model.caption(3.5)
    with pytest.raises(FileNotFoundError):
        smallcap.SmallCap.from_pretrained(PACK / "no_such_model")
    with pytest.raises(ValueError, match="weight type"):
        smallcap.SmallCap.from_pretrained(PACK / "model", tokenizer=PACK / "tokenizer",
                                          decoder_weights="f8")
    # The model still captions after every refusal.
    assert model.caption(img, no_retrieval=True)[0]["generated_ids"]


def test_help_documents_the_api():
    for fn in (smallcap.SmallCap.from_pretrained, smallcap.SmallCap.caption,
               smallcap.SmallCap.retrieve, smallcap.Datastore.search, smallcap.evaluate,
               smallcap.pipeline):
        assert fn.__doc__ and len(fn.__doc__) > 80, fn.__name__
    assert "retrieved_captions" in smallcap.SmallCap.caption.__doc__


def test_ctrl_c_stops_a_long_call(model):
    import signal
    import time

    image = (PACK / "images" / "chelsea.png").read_bytes()
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            # About 60 ms an image here: far longer than the 0.3 s before the signal.
            model.caption([image] * 100, no_retrieval=True)
    finally:
        timer.cancel()
    assert time.monotonic() - start < 5.0
    # The model still works afterwards.
    assert model.caption(image, no_retrieval=True)[0]["generated_ids"]
