"""Scale-out on Ray (optional: ``pip install 'retrieval[ray]'``): the same pipeline code on a laptop, a local Ray
cluster, or a real one, by changing an address.

- ``RayExecutor(address)``: where sharded work runs — index shards on actors (``RayShards``), per-shard builds as
  tasks, corpus encoding through Ray Data over a pool of encoder actors;
- ``encode_corpus``: a corpus (``Corpus``, BEIR ``corpus.jsonl`` or Parquet) to vectors on the cluster;
- ``search_batches``: a saved pipeline over many queries, split among actors that each hold a copy of it.

Nothing below this package imports Ray: the lower layers take an ``Executor`` (``retrieval.shards``).
"""

from .cluster import ADDRESS_HELP, check_address, connect, ray_module
from .encode import encode_corpus, encode_dataset
from .executor import RayExecutor, executor_from_args
from .search import search_batches
from .shards import RayShards, ray_placer

__all__ = ["ADDRESS_HELP", "RayExecutor", "RayShards", "check_address", "connect", "encode_corpus", "encode_dataset",
           "executor_from_args", "ray_module", "ray_placer", "search_batches"]
