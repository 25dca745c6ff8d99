"""smallcap: SmallCap image captioning (Ramos et al., CVPR 2023) with retrieved captions in the
prompt, on the Rust engine of the `smallcap` project: the reference's generated ids, no torch.

    >>> import smallcap
    >>> model = smallcap.SmallCap.from_pretrained("Yova/SmallCap7M", datastore="coco_index")
    >>> model.caption("dog.jpg")[0]["caption"]

The pieces:

- :class:`SmallCap`: a checkpoint (folder or hub id) with its tokenizer, retrieval encoder and
  datastores, loaded once; :meth:`SmallCap.caption` and :meth:`SmallCap.retrieve`.
- :class:`Datastore`: caption datastores (our folders, FAISS files, pgvector tables): open,
  build, add, info, search.
- :func:`evaluate`: the COCO caption metrics as pycocoevalcap computes them.
- :func:`pipeline`: ``pipeline("image-to-text", model=...)`` as transformers' pipeline is called.

Images are file paths, ``bytes`` of an encoded image, binary file objects, PIL images or
``H×W×3`` uint8 numpy arrays (RGB). Long calls release the GIL, a model may be used from several
threads at once, and Ctrl-C stops a call. Errors are ``FileNotFoundError`` (a missing file),
``ValueError`` (bad input) or ``RuntimeError``, with the engine's message.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from . import _native

__all__ = ["SmallCap", "Datastore", "evaluate", "pipeline", "ImageLike"]

#: What an image may be given as.
ImageLike = Any


def _image_item(image: ImageLike) -> tuple:
    """The native layer's form of one image."""
    if isinstance(image, (str, os.PathLike)):
        return ("path", os.fspath(image))
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ("bytes", bytes(image))
    if hasattr(image, "read") and callable(image.read):
        data = image.read()  # a closed file raises ValueError here
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError("image file object: opened in text mode; open it with 'rb'")
        return ("bytes", bytes(data))
    pil = sys.modules.get("PIL.Image")
    if pil is not None and isinstance(image, pil.Image):
        # As the reference opens every image: converted to RGB first.
        rgb = image.convert("RGB")
        return ("rgb", rgb.tobytes(), rgb.height, rgb.width)
    np = sys.modules.get("numpy")
    if np is not None and isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ValueError(f"image array: dtype {image.dtype}, expected uint8")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"image array: shape {image.shape}, expected (height, width, 3) RGB")
        a = np.ascontiguousarray(image)
        return ("rgb", a.tobytes(), int(a.shape[0]), int(a.shape[1]))
    raise TypeError(
        f"an image is a path, bytes, a binary file, a PIL image or an H×W×3 uint8 numpy array, "
        f"not {type(image).__name__}"
    )


def _images(images: Union[ImageLike, Sequence[ImageLike]]) -> List[tuple]:
    if isinstance(images, (list, tuple)):
        return [_image_item(i) for i in images]
    return [_image_item(images)]


def _datastore_specs(datastore: Union[None, str, Mapping[str, str], Sequence[str]]) -> List[str]:
    if datastore is None:
        return []
    if isinstance(datastore, (str, os.PathLike)):
        return [os.fspath(datastore)]
    if isinstance(datastore, Mapping):
        return [f"{name}={os.fspath(spec)}" for name, spec in datastore.items()]
    return [os.fspath(s) for s in datastore]


class SmallCap:
    """A SmallCap checkpoint with its tokenizer, retrieval encoder and datastores, loaded once.

    Create it with :meth:`from_pretrained`. Safe to share between threads.
    """

    def __init__(self, native: "_native.Model") -> None:
        self._native = native

    @classmethod
    def from_pretrained(
        cls,
        model: Union[str, os.PathLike],
        tokenizer: Optional[Union[str, os.PathLike]] = None,
        datastore: Union[None, str, Mapping[str, str], Sequence[str]] = None,
        retrieval_encoder: Optional[str] = None,
        decoder_weights: str = "f32",
        device: str = "cpu",
        encoder_precision: str = "f32",
    ) -> "SmallCap":
        """Loads a checkpoint, as ``smallcap caption`` does.

        Args:
            model: a checkpoint folder (``config.json`` and weights) or a hub id such as
                ``"Yova/SmallCap7M"`` (``owner/name[@revision]``).
            tokenizer: the decoder's tokenizer folder or hub id (default: the model folder's
                own, else the decoder family's on the hub: ``gpt2``, ``facebook/opt-125m``,
                ``facebook/xglm-564M``).
            datastore: a datastore spec (our folder, a FAISS index file, ``INDEX,captions=FILE``,
                a ``postgres://`` URL, ``hf://`` hub files), a list of them, or a dict of
                ``name: spec``; the first is the default.
            retrieval_encoder: the CLIP model that embeds queries (default: the one the
                datastore records, else the checkpoint's, ``RN50x64`` for SmallCap7M): an
                OpenAI name, an OpenAI CLIP file, or a Hugging Face CLIPModel folder or hub id.
            decoder_weights: ``"f32"`` (the reference's ids), ``"f16"``, ``"bf16"`` or ``"int8"``
                (per-channel int8 weights: a quarter of the bytes read per step).
            device: ``"cpu"`` or ``"cuda[:N]"`` (in a CUDA build).
            encoder_precision: how the retrieval encoder's ResNet computes: ``"f32"`` (the
                reference's query embeddings and top-k) or ``"bf16"`` (faster on CPUs with AMX or
                AVX-512 BF16; embeddings agree with f32's to about 1e-3).
        """
        native = _native.Model(
            os.fspath(model),
            None if tokenizer is None else os.fspath(tokenizer),
            _datastore_specs(datastore),
            retrieval_encoder,
            decoder_weights,
            encoder_precision,
            device,
        )
        return cls(native)

    @property
    def datastores(self) -> List[str]:
        """The names of the loaded datastores, the default first."""
        return self._native.datastores()

    def caption(
        self,
        images: Union[ImageLike, Sequence[ImageLike]],
        captions: Union[None, Sequence[str], Sequence[Sequence[str]]] = None,
        k: int = 4,
        num_beams: int = 3,
        max_new_tokens: int = 25,
        early_stopping: bool = True,
        length_penalty: float = 0.0,
        no_retrieval: bool = False,
        datastore: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """Captions images, batched: the reference's ids and captions (infer.py's settings by
        default).

        Args:
            images: one image or a list (paths, bytes, binary files, PIL images, ``H×W×3``
                uint8 RGB numpy arrays).
            captions: ``None``: live retrieval from the datastore (``datastore``, else the
                default one), or the no-retrieval prompt ``This image shows `` when none is
                loaded; a list of strings: the same captions for every image; a list of lists:
                each image's own.
            k: captions in the prompt (and retrieved).
            num_beams, max_new_tokens, early_stopping, length_penalty: beam search as
                transformers' ``generate``.
            no_retrieval: the prompt without captions, whatever else is given.
            datastore: the name of the datastore to retrieve from.

        Returns:
            One dict per image: ``caption``, ``generated_ids`` (eos included when emitted),
            ``prompt_ids``, ``retrieved_captions`` and ``retrieval_scores`` (``None`` unless
            retrieved live).
        """
        items = _images(images)
        n = len(items)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise ValueError(f"k must be a non-negative integer, not {k!r}")
        if no_retrieval:
            prompts: List[Any] = [False] * n
        elif captions is None:
            if datastore is None and not self.datastores:
                prompts = [False] * n
            else:
                prompts = [None] * n
        elif all(isinstance(c, str) for c in captions):
            prompts = [list(captions)] * n
        else:
            per_image = [list(c) for c in captions]
            if len(per_image) != n:
                raise ValueError(f"captions: {len(per_image)} lists for {n} images")
            if not all(isinstance(c, str) for caps in per_image for c in caps):
                raise ValueError("captions: a list of strings, or one list of strings per image")
            prompts = per_image
        for i, p in enumerate(prompts):
            if isinstance(p, list) and len(p) < k:
                raise ValueError(f"image {i}: k = {k} but only {len(p)} captions are given")
        return self._native.caption(
            items, prompts, datastore, k, num_beams, max_new_tokens, early_stopping, length_penalty
        )

    def retrieve(
        self,
        images: Union[None, ImageLike, Sequence[ImageLike]] = None,
        texts: Union[None, str, Sequence[str]] = None,
        k: int = 4,
        datastore: Optional[str] = None,
    ) -> List[Dict[str, Any]]:
        """The top-k datastore captions of each image, then of each text.

        Returns one dict per query: ``ids`` (rows of the store, FAISS's ids), ``scores``
        (cosine similarities) and ``captions``.
        """
        items = [] if images is None else _images(images)
        text_list = [] if texts is None else ([texts] if isinstance(texts, str) else list(texts))
        return self._native.retrieve(items, text_list, k, datastore)

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]], **kwargs: Any) -> List[Dict[str, Any]]:
        """Same as :meth:`caption`."""
        return self.caption(images, **kwargs)


def _captions_args(captions: Union[str, os.PathLike, Sequence[str]]) -> tuple:
    if isinstance(captions, (str, os.PathLike)):
        return (os.fspath(captions), None)
    texts = list(captions)
    if not all(isinstance(t, str) for t in texts):
        raise ValueError("captions: a file path or a list of strings")
    return (None, texts)


class Datastore:
    """A caption datastore: our folder format, a FAISS flat or IVF file with its captions, or a
    pgvector table, opened from a spec as ``--datastore`` takes it."""

    def __init__(self, native: "_native.Store") -> None:
        self._native = native

    @classmethod
    def open(cls, spec: Union[str, os.PathLike]) -> "Datastore":
        """Opens the store ``spec`` names (a folder, ``INDEX_FILE``, ``INDEX_FILE,captions=FILE``,
        ``postgres://…?table=NAME``, ``hf://OWNER/REPO/FILE``)."""
        return cls(_native.Store(os.fspath(spec)))

    @classmethod
    def build(
        cls,
        captions: Union[str, os.PathLike, Sequence[str]],
        encoder: str,
        out: Union[str, os.PathLike],
        batch_size: Optional[int] = None,
        f16: bool = False,
        device: str = "cpu",
        encoder_precision: str = "f32",
    ) -> "Datastore":
        """Encodes ``captions`` (a file: text lines, JSON list, COCO or Karpathy annotations; or
        a list of strings) with the retrieval encoder ``encoder`` into a new datastore folder
        ``out``, as ``smallcap datastore build`` (an interrupted build resumes after its last whole
        batch of ``batch_size`` captions, by default 4096).
        ``encoder_precision="bf16"`` encodes faster with embeddings within about 1e-3 of f32's."""
        path, texts = _captions_args(captions)
        return cls(
            _native.Store.build(os.fspath(out), encoder, path, texts, batch_size, f16, encoder_precision, device)
        )

    @classmethod
    def add(
        cls,
        store: Union[str, os.PathLike],
        captions: Union[str, os.PathLike, Sequence[str]],
        encoder: Optional[str] = None,
        batch_size: Optional[int] = None,
        device: str = "cpu",
        encoder_precision: str = "f32",
    ) -> "Datastore":
        """Adds ``captions`` to the datastore folder ``store`` (encoded with the encoder it
        records unless ``encoder`` is given, at ``encoder_precision``) and returns the grown
        store."""
        path, texts = _captions_args(captions)
        return cls(_native.Store.add(os.fspath(store), encoder, path, texts, batch_size, encoder_precision, device))

    def info(self) -> Dict[str, Any]:
        """The store's manifest (encoder, dim, count, dtype, checksums), or for a FAISS file its
        location, count and dimension."""
        return json.loads(self._native.info())

    @property
    def dim(self) -> int:
        """The embedding dimension."""
        return self._native.shape()[1]

    def __len__(self) -> int:
        return self._native.shape()[0]

    def __repr__(self) -> str:
        n, d, spec = self._native.shape()
        return f"Datastore({spec!r}, captions={n}, dim={d})"

    def search(self, queries: Any, k: int = 4) -> List[Dict[str, Any]]:
        """Top-k of L2-normalised query embeddings (a numpy array ``[n, dim]`` or ``[dim]``, or
        a list of float lists): per query ``ids``, ``scores`` and ``captions``."""
        np = sys.modules.get("numpy")
        if np is not None and isinstance(queries, np.ndarray):
            q = queries
        else:
            import numpy as np  # noqa: F811  (lists need numpy too)

            q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise ValueError(f"queries: shape {q.shape}, expected (n, {self.dim})")
        if not np.issubdtype(q.dtype, np.floating):
            raise ValueError(f"queries: dtype {q.dtype}, expected floating point")
        data = np.ascontiguousarray(q, dtype="<f4").tobytes()
        return self._native.search(data, int(q.shape[0]), k)


def evaluate(
    gold: Union[str, os.PathLike, Mapping[str, Any]],
    pred: Union[str, os.PathLike, Sequence[Mapping[str, Any]]],
    spice: bool = True,
    meteor: bool = True,
) -> Dict[str, Any]:
    """The COCO caption metrics (BLEU-1..4, METEOR, ROUGE-L, CIDEr, and SPICE where it can run)
    as pycocoevalcap 1.2 computes them: what ``smallcap eval --json`` prints.

    Args:
        gold: COCO caption annotations (``{"images", "annotations"}``): a path or the object.
        pred: COCO results (``[{"image_id", "caption"}]``): a path or the list.
        spice, meteor: compute SPICE (needs Java and Stanford CoreNLP) and METEOR.

    For English captions: the PTB tokeniser and METEOR's resources are English.
    """
    with tempfile.TemporaryDirectory() as tmp:

        def as_path(value: Any, name: str) -> str:
            if isinstance(value, (str, os.PathLike)):
                return os.fspath(value)
            path = os.path.join(tmp, name)
            with open(path, "w", encoding="utf-8") as f:
                json.dump(value, f)
            return path

        report = _native.evaluate(as_path(gold, "gold.json"), as_path(pred, "pred.json"), spice, meteor)
    return json.loads(report)


class ImageToTextPipeline:
    """``pipeline("image-to-text", model=...)``: called with images, returns
    ``[{"generated_text": caption}]`` per image (a list of those for a list of images), as
    transformers' image-to-text pipeline does. Keyword arguments go to
    :meth:`SmallCap.caption`."""

    def __init__(self, model: SmallCap, **defaults: Any) -> None:
        self.model = model
        self.defaults = defaults

    def __call__(self, images: Union[ImageLike, Sequence[ImageLike]], **kwargs: Any) -> Any:
        out = self.model.caption(images, **{**self.defaults, **kwargs})
        results = [[{"generated_text": o["caption"]}] for o in out]
        return results if isinstance(images, (list, tuple)) else results[0]


def pipeline(task: str, model: Union[SmallCap, str, os.PathLike], **kwargs: Any) -> Callable[..., Any]:
    """A transformers-style pipeline. ``task`` must be ``"image-to-text"``; ``model`` is a
    :class:`SmallCap` or what :meth:`SmallCap.from_pretrained` takes (then ``tokenizer``,
    ``datastore``, ``retrieval_encoder``, ``decoder_weights``, ``encoder_precision`` and ``device`` in ``kwargs`` go to
    it, the rest to every :meth:`SmallCap.caption` call)."""
    if task != "image-to-text":
        raise ValueError(f"task {task!r} is not supported: smallcap's pipeline is 'image-to-text'")
    if not isinstance(model, SmallCap):
        load_keys = ("tokenizer", "datastore", "retrieval_encoder", "decoder_weights", "encoder_precision", "device")
        load = {key: kwargs.pop(key) for key in load_keys if key in kwargs}
        model = SmallCap.from_pretrained(model, **load)
    return ImageToTextPipeline(model, **kwargs)
