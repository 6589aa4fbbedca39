"""Your own photos: folders indexed incrementally into one photo index, searched while it grows.

``files`` (which files are photos, content hashes), ``store`` (the SQLite records and the vector
matrix), ``indexer`` (bringing the index up to date, in the foreground or a background thread) and
``serving`` (``PhotoSearch``).
A page uses::

    from crossmodal.photos import IndexingThread, PhotoSearch, image_backbone_for

    indexer = IndexingThread(index_dir, roots, image_backbone_for(state), checkpoint=checkpoint_path)
    indexer.start()                    # commits every indexer.COMMIT_SECONDS
    search = PhotoSearch(index_dir, checkpoint_path, heads, state, roots=roots)
    hits = search.search_text("a dog on the grass")   # what is indexed so far
"""
from crossmodal.photos.files import EXTENSIONS, content_hash, scan_folder
from crossmodal.photos.indexer import (
    IndexingThread,
    IndexReport,
    image_backbone_for,
    index_photos,
    vector_identity,
)
from crossmodal.photos.serving import PhotoSearch
from crossmodal.photos.store import PhotoRecord, PhotoStore, Snapshot, StoreBusy, StoreError

__all__ = [
    "EXTENSIONS", "content_hash", "scan_folder", "IndexingThread",
    "IndexReport", "image_backbone_for", "index_photos", "vector_identity", "PhotoSearch", "PhotoRecord",
    "PhotoStore", "Snapshot", "StoreBusy", "StoreError",
]
