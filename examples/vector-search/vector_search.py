"""vector-search: an example scenario plugin — compressed embedding indexes, recall vs bytes.

A complete third-party scenario in one module, written against the public contracts only
(``harness``, ``harness.api``). It adds:

* a **scenario** ``vector-search``: embed a corpus with the run's model, build a method's
  index over it, and search it with held-out queries. Quality is recall@k against exact
  float32 search over the same embeddings; costs are the index's bytes (a column this
  scenario declares, with its own Pareto plot) and the search latency (the core's timed
  loop, so the leaderboard's latency and throughput columns come for free);
* a **task** ``digits-embeddings``: scikit-learn's digits (shipped with the package, so
  offline), split by the run's seed into a corpus and queries;
* three **methods**: ``flat`` (float32, exact: the baseline), ``int8`` (per-dimension scalar
  quantization, 4× smaller) and ``binary`` (sign bits of the centred vectors with Hamming
  search, 32× smaller, optionally re-ranking its top candidates with the int8 codes).

The method protocol of this scenario is ``build_index(vectors, params) -> index`` where the
index has ``search(queries, k) -> (n, k) int array`` and ``nbytes() -> int``.

Run it with ``harness run examples/vector-search/suite.yaml`` (the suite loads this file
through its ``plugins:`` list), or install it (``pip install -e examples/vector-search``) to
have it everywhere through its entry point. docs/writing-a-scenario.md walks through it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from harness import hookimpl
from harness.api import (
    CostColumn,
    CostPlot,
    NoParams,
    Params,
    QualityColumn,
    ResultColumns,
    RunContext,
)

__version__ = "1.0"


# -- the task -------------------------------------------------------------------------------


class DigitsParams(Params):
    """How many of the 1,797 digits are queries (the rest is the corpus), and k."""

    queries: int = Field(300, gt=0, lt=1797)
    k: int = Field(10, gt=0)


class DigitsEmbeddings:
    name = "digits-embeddings"
    description = ("scikit-learn's 8x8 digits as images for the run's model to embed: "
                   "a seeded split into corpus and queries")
    scenario = "vector-search"
    params = DigitsParams

    def data(self, params: DigitsParams, seed: int, **inputs: Any
             ) -> tuple[np.ndarray, np.ndarray]:
        """(corpus images, query images) as float32 arrays of shape (n, 8, 8) in [0, 1]."""
        from sklearn.datasets import load_digits

        images = load_digits().images.astype(np.float32) / 16.0
        order = np.random.default_rng(seed).permutation(len(images))
        return images[order[params.queries:]], images[order[:params.queries]]


# -- the scenario ---------------------------------------------------------------------------


def embed(model: Any, images: np.ndarray, device: str) -> np.ndarray:
    """The model's final [CLS] feature of each image, L2-normalised (cosine = dot).

    Images are resized to the model's input and given its channel count, as any ViT
    feature extractor would.
    """
    import torch
    import torch.nn.functional as F

    config = model.config
    x = torch.from_numpy(images)[:, None]
    x = F.interpolate(x, size=(config.image_size, config.image_size), mode="bilinear",
                      align_corners=False).repeat(1, config.num_channels, 1, 1)
    with torch.inference_mode():
        features = torch.cat([model(pixel_values=batch.to(device)).last_hidden_state[:, 0]
                              for batch in x.split(256)])
    return F.normalize(features.float(), dim=-1).cpu().numpy()


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's true k nearest neighbours that the index returned."""
    hits = [len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / truth.shape[1]


class VectorSearchScenario:
    name = "vector-search"
    description = ("nearest-neighbour search in a method's index over model embeddings: "
                   "recall@k against exact search, index bytes, search latency")
    method_protocol = ("build_index",)
    model_kinds = ("base",)
    columns = ResultColumns(
        quality=(QualityColumn("recall", higher_is_better=True),),
        costs=(CostColumn("index_size", "index size", "index_bytes", "bytes"),),
        plots=(CostPlot("index_size", "Quality vs index size", "bytes of the search index",
                        "index bytes"),),
    )

    def run(self, ctx: RunContext) -> None:
        params = ctx.task.params(**ctx.spec.task_params)
        corpus_images, query_images = ctx.task.data(params, ctx.spec.seed)
        model = ctx.load_model("base").eval()
        with ctx.phase("embed"):
            corpus = embed(model, corpus_images, ctx.device)
            queries = embed(model, query_images, ctx.device)
        truth = np.argsort(-(queries @ corpus.T), axis=1, kind="stable")[:, :params.k]

        with ctx.phase("build"):
            index = ctx.method.build_index(corpus, dict(ctx.spec.params))
        found = index.search(queries, params.k)
        record = ctx.recorder.record
        record("eval", "recall", recall_at_k(found, truth), "", higher_is_better=True)
        record("index", "index_bytes", index.nbytes(), "bytes")
        record("index", "float32_bytes", corpus.astype(np.float32).nbytes, "bytes")
        ctx.time("search", lambda: index.search(queries, params.k), items=len(queries),
                 item_unit="query")


# -- the methods ----------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k highest scores per row, best first (ties by index)."""
    part = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


class FlatIndex:
    def __init__(self, vectors: np.ndarray) -> None:
        self.vectors = vectors.astype(np.float32)

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return top_k(queries @ self.vectors.T, k)

    def nbytes(self) -> int:
        return self.vectors.nbytes


class Int8Index:
    """Per-dimension affine quantization to uint8; queries stay float32."""

    def __init__(self, vectors: np.ndarray) -> None:
        self.low = vectors.min(axis=0)
        self.step = np.maximum(vectors.max(axis=0) - self.low, 1e-12) / 255.0
        self.codes = np.round((vectors - self.low) / self.step).astype(np.uint8)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """q · (low + step · code) for every corpus row, without a float copy of the corpus."""
        codes = self.codes.T.astype(np.float32)
        return (queries * self.step) @ codes + (queries @ self.low)[:, None]

    def rescore(self, queries: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The same score for each query's own candidate rows (``rows``: (n, c) indices)."""
        codes = self.codes[rows].astype(np.float32)
        return np.einsum("nd,ncd->nc", queries * self.step, codes) + (queries @ self.low)[:, None]

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        return top_k(self.scores(queries), k)

    def nbytes(self) -> int:
        return self.codes.nbytes + self.low.nbytes + self.step.nbytes


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


class BinaryIndex:
    """Sign bits of the centred vectors, searched by Hamming distance; with ``rerank`` > 0
    the best ``rerank`` candidates per query are re-scored with int8 codes (kept too)."""

    def __init__(self, vectors: np.ndarray, rerank: int) -> None:
        self.center = vectors.mean(axis=0)
        self.bits = np.packbits(vectors - self.center > 0, axis=1)
        self.rerank = rerank
        self.int8 = Int8Index(vectors) if rerank else None

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        query_bits = np.packbits(queries - self.center > 0, axis=1)
        distance = _POPCOUNT[query_bits[:, None, :] ^ self.bits[None, :, :]].sum(
            axis=2, dtype=np.int32)
        if self.int8 is None:
            return top_k(-distance.astype(np.float32), k)
        candidates = top_k(-distance.astype(np.float32), max(k, self.rerank))
        rescored = self.int8.rescore(queries, candidates)
        return np.take_along_axis(candidates, top_k(rescored, k), axis=1)

    def nbytes(self) -> int:
        extra = self.int8.nbytes() if self.int8 is not None else 0
        return self.bits.nbytes + self.center.astype(np.float32).nbytes + extra


class Flat:
    name = "flat"
    version = "1"
    description = "float32 vectors, exact search (the baseline every index is compared with)"
    scenarios = ("vector-search",)
    params = NoParams

    def build_index(self, vectors: np.ndarray, params: dict[str, Any]) -> FlatIndex:
        return FlatIndex(vectors)


class Int8:
    name = "int8"
    version = "1"
    description = "per-dimension scalar quantization to uint8 (4x smaller than float32)"
    scenarios = ("vector-search",)
    params = NoParams

    def build_index(self, vectors: np.ndarray, params: dict[str, Any]) -> Int8Index:
        return Int8Index(vectors)


class BinaryParams(Params):
    """``rerank``: re-score this many Hamming candidates per query with int8 codes (0: none)."""

    rerank: int = Field(0, ge=0)


class Binary:
    name = "binary"
    version = "1"
    description = "one sign bit per dimension with Hamming search (32x smaller), optional rerank"
    scenarios = ("vector-search",)
    params = BinaryParams

    def build_index(self, vectors: np.ndarray, params: dict[str, Any]) -> BinaryIndex:
        return BinaryIndex(vectors, params["rerank"])


# -- registration ---------------------------------------------------------------------------


@hookimpl
def harness_add_scenarios() -> list[Any]:
    return [VectorSearchScenario()]


@hookimpl
def harness_add_tasks() -> list[Any]:
    return [DigitsEmbeddings()]


@hookimpl
def harness_add_methods() -> list[Any]:
    return [Flat(), Int8(), Binary()]
