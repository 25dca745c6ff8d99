"""Type stubs of the extension module (the public API is in ``smallcap/__init__.py``)."""

from typing import Any, Dict, List, Optional, Tuple

class Model:
    def __init__(
        self,
        model: str,
        tokenizer: Optional[str],
        datastores: List[str],
        retrieval_encoder: Optional[str],
        decoder_weights: str,
        encoder_precision: str,
        device: str,
    ) -> None: ...
    def datastores(self) -> List[str]: ...
    def special_ids(self) -> Tuple[int, int]: ...
    def caption(
        self,
        images: List[tuple],
        prompts: List[Any],
        datastore: Optional[str],
        k: int,
        num_beams: int,
        max_new_tokens: int,
        early_stopping: bool,
        length_penalty: float,
    ) -> List[Dict[str, Any]]: ...
    def retrieve(
        self, images: List[tuple], texts: List[str], k: int, datastore: Optional[str]
    ) -> List[Dict[str, Any]]: ...

class Store:
    def __init__(self, spec: str) -> None: ...
    @staticmethod
    def build(
        out: str,
        encoder: str,
        path: Optional[str],
        texts: Optional[List[str]],
        batch_size: Optional[int],
        f16: bool,
        encoder_precision: str,
        device: str,
    ) -> "Store": ...
    @staticmethod
    def add(
        dir: str,
        encoder: Optional[str],
        path: Optional[str],
        texts: Optional[List[str]],
        batch_size: Optional[int],
        encoder_precision: str,
        device: str,
    ) -> "Store": ...
    def info(self) -> str: ...
    def shape(self) -> Tuple[int, int, str]: ...
    def search(self, queries: bytes, n: int, k: int) -> List[Dict[str, Any]]: ...

def evaluate(gold: str, pred: str, spice: bool, meteor: bool) -> str: ...
