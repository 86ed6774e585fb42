"""A corpus through a bi-encoder on a Ray cluster: Ray Data ``map_batches`` over a fixed pool of actors, each
holding the encoder (its adapter and its OpenVINO export, where it has one) loaded once.

The encoder travels as its saved folder (``BiEncoder.save``) packed into the object store, so no node needs a
shared file system for it. The corpus comes from a ``Corpus`` in memory, or is read by Ray Data from a BEIR
``corpus.jsonl`` or a Parquet file (columns ``_id`` or ``id``, ``title``, ``text``) without passing through this
process. The vectors are returned with their ids, and ``encode_corpus`` puts them back in the corpus's order.

From a ``Corpus``, each Ray Data row is one of the batches the encoder itself would run (``BiEncoder.batch_plan``:
texts of like lengths together), so an actor pads and runs exactly what one process runs and the vectors are one
process's, bit for bit on like CPUs (an int8 export's vectors move by up to ~3e-3 with the batch a text is padded
in). From a file, rows arrive as Ray Data reads them and are batched as they come: the vectors then differ from
one process's by that padding effect for an export, by ~1e-7 on torch.
"""

from __future__ import annotations

import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from encoders.bi_encoder import BiEncoder

from ..types import Corpus, Document
from .cluster import ray_module

BATCH = 256  # documents per Ray Data batch
UNPACKED = "retrieval-encoder-"  # + the unpacking process's id + "-": where an actor unpacks the encoder it loads


def pack_folder(folder: str | os.PathLike) -> bytes:
    """A folder as an in-memory tar archive (to send through the object store)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(str(folder), arcname=".")
    return buffer.getvalue()


def unpack_folder(data: bytes) -> Path:
    """A packed folder written to a new temporary folder on this node, named after this process (folders of
    processes that died before removing theirs are removed first: ``remove_stale_unpacked``)."""
    remove_stale_unpacked()
    target = Path(tempfile.mkdtemp(prefix=f"{UNPACKED}{os.getpid()}-"))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(target, filter="data")
    return target


def remove_stale_unpacked(root: str | os.PathLike | None = None) -> list[Path]:
    """Remove the folders that processes of this node unpacked an encoder into and that outlived them (an actor the
    pool killed while it was loading); returns them. A folder whose process is alive is left alone."""
    gone = []
    for folder in Path(root or tempfile.gettempdir()).glob(f"{UNPACKED}*-*"):
        pid = folder.name[len(UNPACKED):].split("-")[0]
        if pid.isdigit() and folder.is_dir() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
            gone.append(folder)
    return gone


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process, or no process id at all: not ours to judge
        return True
    return True


def packed_encoder(encoder: BiEncoder) -> bytes:
    """``encoder`` saved (adapters, exports) and packed."""
    with tempfile.TemporaryDirectory(prefix="retrieval-pack-") as tmp:
        encoder.save(Path(tmp) / "encoder", sentence_transformers=False)  # no base weights for plain loaders
        return pack_folder(Path(tmp) / "encoder")


class EncodeBatches:
    """The Ray Data actor: the encoder loaded once, then batches to ``{"id", "vector"}`` rows. A batch holds
    documents (``_id`` or ``id``, ``title``, ``text``: encoded together), or planned batches (``ids``, ``titles``,
    ``texts``: one list per row, each run as one batch of the encoder)."""

    def __init__(self, packed: list):
        folder = unpack_folder(ray_module().get(packed[0]))
        # a loaded encoder reads no file again, so its unpacked copy goes at once; an actor killed while loading
        # leaves it behind, and the next one to unpack on the node removes it
        try:
            self.encoder = BiEncoder.load(folder)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def __call__(self, batch: dict) -> dict:
        if "texts" in batch:  # rows planned by the encoder's own batch plan: each row runs as one batch
            groups = [_documents(ids, titles, texts) for ids, titles, texts in
                      zip(batch["ids"], batch["titles"], batch["texts"])]
        else:
            ids = batch["_id"] if "_id" in batch else batch["id"]
            groups = [_documents(ids, batch.get("title", [""] * len(ids)), batch["text"])]
        docs = [d for group in groups for d in group]
        vectors = [self.encoder.encode_documents(group, batch_size=len(group)) for group in groups if group]
        return {"id": np.array([d.id for d in docs], dtype=object),
                "vector": np.concatenate(vectors) if vectors else np.zeros((0, self.encoder.dim), np.float32)}


def _documents(ids, titles, texts) -> list[Document]:
    return [Document(str(i), text=str(x or ""), title=str(t or "")) for i, t, x in zip(ids, titles, texts)]


def corpus_dataset(source: Corpus | str | os.PathLike, encoder: BiEncoder | None = None):
    """A Ray Dataset of the corpus: from a ``Corpus``, one row per batch of ``encoder``'s plan (``ids``,
    ``titles``, ``texts``); from a ``.jsonl`` file (BEIR ``corpus.jsonl``) or a ``.parquet`` file or folder, one row
    per document (``_id``, ``title``, ``text``)."""
    ray = ray_module()
    if isinstance(source, Corpus):
        docs = list(source.values())
        plan = (encoder.batch_plan([d.contents for d in docs]) if encoder is not None
                else [list(range(i, min(i + 32, len(docs)))) for i in range(0, len(docs), 32)])
        return ray.data.from_items([{"ids": [docs[i].id for i in rows], "titles": [docs[i].title for i in rows],
                                     "texts": [docs[i].text for i in rows]} for rows in plan])
    path = Path(source)
    # reading asks for no CPU of its own: the encoder actors may hold every CPU of the cluster, and a read task
    # waiting for one would wait for ever (seen on a 2-CPU cluster with 2 workers)
    if path.suffix == ".jsonl" or path.name.endswith(".jsonl.gz"):
        return ray.data.read_json(str(path), lines=True, num_cpus=0)
    if path.suffix == ".parquet" or (path.is_dir() and any(path.glob("*.parquet"))):
        return ray.data.read_parquet(str(path), num_cpus=0)
    raise ValueError(f"{source}: a corpus is a Corpus, a BEIR corpus.jsonl, or a Parquet file or folder "
                     f"(columns _id or id, title, text)")


def encode_dataset(encoder: BiEncoder, source: Corpus | str | os.PathLike, workers: int,
                   cpus_per_worker: float = 1, batch_size: int = BATCH):
    """The corpus's vectors as a (lazy) Ray Dataset of ``{"id", "vector"}``, from ``workers`` actors; about
    ``batch_size`` documents go to an actor at a time."""
    ray = ray_module()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    packed = [ray.put(packed_encoder(encoder))]
    rows = corpus_dataset(source, encoder)
    per_call = max(1, batch_size // encoder.EXPORT_BATCH) if isinstance(source, Corpus) else batch_size
    return rows.map_batches(EncodeBatches, fn_constructor_kwargs={"packed": packed}, batch_size=per_call,
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=cpus_per_worker)


def encode_corpus(encoder: BiEncoder, source: Corpus | str | os.PathLike, workers: int,
                  cpus_per_worker: float = 1, batch_size: int = BATCH,
                  order: Sequence[str] | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, vectors) of every document, encoded on the cluster; in ``order`` (default: a ``Corpus``'s own order,
    or the order the cluster returned them for a file)."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    for batch in encode_dataset(encoder, source, workers, cpus_per_worker, batch_size).iter_batches(
            batch_size=None, batch_format="numpy"):
        ids.extend(str(i) for i in batch["id"])
        parts.append(np.asarray(batch["vector"], dtype=np.float32))
    vectors = np.concatenate(parts) if parts else np.zeros((0, encoder.dim), dtype=np.float32)
    if order is None and isinstance(source, Corpus):
        order = list(source)
    if order is not None:
        row = {d: i for i, d in enumerate(ids)}
        missing = [d for d in order if d not in row]
        if missing or len(order) != len(ids):
            raise ValueError(f"the cluster returned {len(ids)} vectors for {len(order)} documents"
                             + (f" (none for {missing[0]!r})" if missing else ""))
        vectors = vectors[[row[d] for d in order]]
        ids = list(order)
    return ids, np.ascontiguousarray(vectors)
