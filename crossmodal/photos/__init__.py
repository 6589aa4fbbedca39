"""Your own photos: folders indexed incrementally into one photo index, searched while it grows.

``files`` (which files are photos, content hashes), ``store`` (the SQLite records and the vector
matrix), ``indexer`` (bringing the index up to date, in the foreground or a background thread) and
``collection`` (the index as a searchable ``Collection`` for ``crossmodal.engine``). A page uses::

    from crossmodal.engine import SearchEngine, load_image_backbone
    from crossmodal.photos import IndexingThread, PhotoCollection

    indexer = IndexingThread(index_dir, roots, load_image_backbone(state["backbones"]["image"]),
                             checkpoint=checkpoint_path)
    indexer.start()                    # commits every indexer.COMMIT_SECONDS
    engine = SearchEngine(PhotoCollection.open(index_dir, roots), heads, state, checkpoint_path)
    result = crossmodal.search.search(engine, "a dog on the grass")   # what is indexed so far
"""
from crossmodal.photos.collection import PhotoCollection
from crossmodal.photos.files import EXTENSIONS, content_hash, scan_folder
from crossmodal.photos.indexer import IndexingThread, IndexReport, index_photos, vector_identity
from crossmodal.photos.store import PhotoRecord, PhotoStore, Snapshot, StoreBusy, StoreError

__all__ = [
    "EXTENSIONS", "content_hash", "scan_folder", "IndexingThread", "IndexReport", "index_photos", "vector_identity",
    "PhotoCollection", "PhotoRecord", "PhotoStore", "Snapshot", "StoreBusy", "StoreError",
]
