"""Search, look-alikes and bulk export over a ``--search_index`` (LanceDB) of captions.

``python -m caption_index search URI "a dog jumping into a lake"`` (also ``caption-index``) runs
BM25 over the captions; ``--queries FILE`` runs a file of queries (one JSON line of results each);
``--like IMAGE`` finds byte-identical copies (by SHA-256) and then the nearest images by the
model's encoder embedding; ``--html OUT.html`` writes the hits as a self-contained page with
thumbnails. ``python -m caption_index export URI --format bulk-ndjson OUT_DIR`` writes
Elasticsearch / OpenSearch ``_bulk`` files.

Modules, one concern each: :mod:`~caption_index.query` (text and look-alike search over the
table), :mod:`~caption_index.html` (the results page), :mod:`~caption_index.bulk` (``_bulk``
files) and :mod:`~caption_index.cli`. The index itself (schema, sync, refusals) is
:mod:`beam_pipeline.search_index`.
"""
