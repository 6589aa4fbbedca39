"""Feature caches: the on-disk format (``cache``) and the batched extraction that fills them (``extract``)."""
