"""Stage kinds: a new kind of stage, registered in one line, saves and loads inside a pipeline folder, and the
service serves it read-only; saving and loading ask the registry, not the stage classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval.pipeline.folder import load_pipeline, save_pipeline
from retrieval.pipeline.registry import StageKind, kind_of, kinds, register
from retrieval.stage import StageBase, as_queries, check_candidates, check_k
from retrieval.types import Ranking
from retrieval.util import sealed


class Prior(StageBase):
    """A toy stage: adds a fixed prior per document (e.g. a document's popularity) to the incoming scores."""

    def __init__(self, prior: dict[str, float], k: int = 10, name: str = "prior"):
        self.prior, self.k, self.name = dict(prior), check_k(k, name), name

    def search(self, queries, candidates=None, k=None):
        queries = as_queries(queries)
        candidates = check_candidates(candidates, queries, self.name)
        scores = {q: {d: s + self.prior.get(d, 0.0) for d, s in candidates.scores.get(q, {}).items()} for q in queries}
        return Ranking(scores).top_k(k or self.k)


class PriorKind(StageKind):
    name, stage_class = "prior", Prior

    def save(self, stage: Prior, folder: Path, corpus) -> dict:
        folder.mkdir(parents=True)
        (folder / "prior.json").write_text(json.dumps(stage.prior))
        return {}

    def load(self, entry: dict, folder: Path, context) -> Prior:
        return Prior(json.loads((folder / "prior.json").read_text()), k=entry["k"], name=entry["name"])


@pytest.fixture()
def toy_kind():
    before = kinds()
    register(PriorKind())  # the one line a new stage kind needs
    yield
    import retrieval.pipeline.registry as registry

    registry._KINDS.clear()
    registry._KINDS.update(before)


def test_a_registered_toy_kind_saves_and_loads_inside_a_pipeline(toy_kind, adi, adi_lucene, tmp_path):
    prior = {d: (i % 7) / 2.0 for i, d in enumerate(adi.corpus)}
    pipe = adi_lucene >> Prior(prior, k=10)
    expected = pipe.search(adi.queries)
    folder = save_pipeline(pipe, tmp_path / "pipe", adi.corpus)
    config = json.loads((folder / "pipeline.json").read_text())
    assert [s["type"] for s in config["stages"]] == ["bm25", "prior"]
    assert "stages/prior/prior.json" in config["checksums"]  # its files are checked like any other
    loaded, _, _ = load_pipeline(folder)
    assert isinstance(loaded.stages[1], Prior) and loaded.stages[1].prior == prior
    got = loaded.search(adi.queries)
    assert {q: got.ranked(q) for q in got.scores} == {q: expected.ranked(q) for q in expected.scores}
    # the prior really moves documents: the pipeline differs from BM25 alone
    alone = adi_lucene.search(adi.queries, k=10)
    assert any(alone.ranked(q) != got.ranked(q) for q in got.scores)


def test_unregistered_kinds_are_named_in_the_error(adi, adi_lucene, tmp_path):
    with pytest.raises(TypeError, match="no stage kind is registered for Prior"):
        save_pipeline(adi_lucene >> Prior({}, k=5), tmp_path / "pipe", adi.corpus)
    assert not (tmp_path / "pipe").exists()  # nothing half-written
    folder = save_pipeline(adi_lucene, tmp_path / "bm25-only", adi.corpus)
    config = json.loads((folder / "pipeline.json").read_text())
    config["stages"][0]["type"] = "prior"  # a folder saved where that kind was registered
    (folder / "pipeline.json").write_text(json.dumps(sealed(config)))
    with pytest.raises(ValueError, match="unknown stage type 'prior'.*registered kinds"):
        load_pipeline(folder)


def test_kind_of_takes_the_most_specific_registered_class(toy_kind):
    class WeightedPrior(Prior):
        pass

    class WeightedPriorKind(PriorKind):
        name, stage_class = "weighted-prior", WeightedPrior

    register(WeightedPriorKind())
    assert kind_of(WeightedPrior({})).name == "weighted-prior" and kind_of(Prior({})).name == "prior"


def test_the_service_serves_a_toy_kind_and_refuses_writes_to_it(toy_kind, adi, adi_lucene, tmp_path):
    from retrieval.service import Domain, DomainError
    from retrieval.types import Document

    save_pipeline(adi_lucene >> Prior({d: 1.0 for d in adi.corpus}, k=10), tmp_path / "root" / "toy", adi.corpus)
    d = Domain("toy", tmp_path / "root" / "toy", tmp_path / "work").open(models=None)
    assert d.status == "ready", d.error
    q = next(iter(adi.queries.values()))
    assert len(d.search(q, 5).hits) == 5
    with pytest.raises(DomainError) as e:
        d.upsert([Document("new", "text", "title")])
    assert e.value.status == 409 and e.value.code == "read_only" and "'prior'" in e.value.detail
    assert "new" not in d.docs and d.journal.records == 0  # refused before anything was journaled
    d.close()
