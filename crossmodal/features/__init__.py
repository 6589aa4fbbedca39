"""Feature caches: the on-disk format (``cache``), the batched extraction that fills them (``extract``)
and its nvJPEG input path for ``decode="gpu"`` (``gpu_decode``)."""
