"""crossmodal: the library behind the text-to-image retrieval pipeline.

One module per concept (docs/architecture.md has the map): ``backbones`` (frozen encoders),
``features`` (cache format and extraction), ``captions`` (caption files and splits), ``keywords``
(keyword samples), ``collection`` (what is searched), ``engine`` (the search engine), ``search`` (the
query pipeline), ``index`` (exact and FAISS search), ``page`` and ``web`` (the search page),
``querybank``, ``calibration``, ``metrics``, ``evaluation``, ``photos`` (the index of your own photo
folders), ``atomic_io``, ``paths`` and ``cli`` (the stage scripts' shared command line and the
composition root). Importing the package loads nothing heavy; each module imports what it needs.
"""
