"""Re-indexing a deployed gallery with the unlearned model (``python -m jaxforget.reindex``).

A face-search service that receives the unlearned model still serves an index built with the old
one: nothing is forgotten until every stored photo is embedded again and the index rebuilt. This
package does that job, streaming, resumable and spread over Ray when asked:

* :mod:`.core` -- :func:`reindex`, the recipe (list, check ``OUT``, embed the shards left, index,
  audit) and :class:`Options`;
* :mod:`.layout` -- the files of ``OUT`` and how each is written without tearing or repeating;
* :mod:`.shard` -- :func:`~.shard.embed_shard`, the one per-shard function every runner calls;
* :mod:`.runners` -- this process, or Ray Data ``map_batches`` over an actor pool;
* :mod:`.index_build` -- ``index.faiss`` (exact, streamed; or a trained FAISS factory index);
* :mod:`.audit` -- the forgotten people's photos searched in the new index, beside the old one.
"""

from jaxforget.reindex.core import Options, reindex

__all__ = ["Options", "reindex"]
