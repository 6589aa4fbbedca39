"""The stage scripts' command line: every flag declared once, process setup, logging.

A stage script starts with ``cli.prepare_process()`` (settings torch reads when it loads), then
builds its parser from the flags declared here, with defaults from the ``config`` module it is
given::

    p = cli.StageParser(__doc__, config)
    p.flags("images", "captions", "splits", "work-dir", "device")
    args = p.parse()          # logging set up, args.layout resolved
"""
from __future__ import annotations

import argparse
import dataclasses
import errno
import importlib
import logging
import os
import shlex
import sqlite3
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from crossmodal.paths import Layout


def prepare_process(serving: bool = False) -> None:
    """Settings that must be in place before torch loads; every stage script calls this first.
    ``serving``: also those that keep a long-running server small (``bench/app_memory.py`` measures them)."""
    # OpenMP threads that spin while waiting for each other collapse when the cores are shared: a
    # training step measured many times slower with 2 spinning torch threads on a busy 2-core
    # machine, as fast as 1 thread with passive waiting. A value set by the user wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if serving:
        _private_upload_folder()
        _tune_malloc()
        # transformers' BERT code imports torch._dynamo, which loads Triton, a GPU kernel compiler
        # (75 MB resident), though the page never compiles a kernel; with None in sys.modules the
        # import fails and torch treats Triton as absent.
        sys.modules.setdefault("triton", None)


UPLOAD_FOLDER_PREFIX = "crossmodal-uploads-"


def _private_upload_folder() -> None:
    """The page's uploads in a folder of its own (GRADIO_TEMP_DIR, read when Gradio loads), removed at
    exit; those of earlier pages killed before they could remove theirs go now. A folder set by the
    user is left to them."""
    if os.environ.get("GRADIO_TEMP_DIR"):
        return
    import atexit
    import shutil
    import tempfile

    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{UPLOAD_FOLDER_PREFIX}*"):
        pid = stale.name[len(UPLOAD_FOLDER_PREFIX):].split("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and os.name == "posix":
            shutil.rmtree(stale, ignore_errors=True)
    folder = tempfile.mkdtemp(prefix=f"{UPLOAD_FOLDER_PREFIX}{os.getpid()}-")
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, True)


def _libc() -> Any:
    import ctypes

    return ctypes.CDLL("libc.so.6")


def _tune_malloc(arenas: int = 2, mmap_threshold: int = 4 << 20) -> None:
    """glibc gives each request thread its own heap arena (tens of MB each, rarely returned); two
    are plenty for a server whose work is a few small tensor ops per request. Blocks from
    ``mmap_threshold`` up (a decoded photo's) are mapped and unmapped, so they go back to the OS
    when freed; glibc would otherwise raise that threshold after the first such block is freed and
    keep the later ones in its heap."""
    try:
        libc = _libc()
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
        libc.mallopt(-3, mmap_threshold)  # M_MMAP_THRESHOLD (setting it also stops its adjustment)
    except (OSError, AttributeError):  # not glibc
        pass


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them after big temporary allocations, such
    as opening a collection)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def hub_offline_unless_model(argv: list[str] | None = None) -> None:
    """Serving loads every model from local files, so Hugging Face hub lookups are turned off (before
    the hub client reads the setting at import), unless ``--model`` names one open_clip may download."""
    words = sys.argv[1:] if argv is None else argv
    if not any(w == "--model" or w.startswith("--model=") for w in words):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    # transformers/httpx chatter would bury the one line per decision we log ourselves
    for noisy in ("httpx", "urllib3", "transformers", "huggingface_hub", "filelock", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_quiet_open_clip)


def _quiet_open_clip(record: logging.LogRecord) -> bool:
    """open_clip logs each step of building a model to the root logger, and a "initialized randomly"
    warning before the weights this project loads next; its errors still show."""
    return not (record.name == "root" and f"{os.sep}open_clip{os.sep}" in record.pathname
                and record.levelno < logging.ERROR)


def _image_backbone_help() -> str:
    from crossmodal.backbones import IMAGE_BACKBONES  # lazy: torch loads after prepare_process()

    names = " | ".join(IMAGE_BACKBONES)
    return (f"auto | {names}, or several joined by + (their features side by side, e.g. "
            f"{'+'.join(list(IMAGE_BACKBONES)[-2:])})")


def _text_backbone_help() -> str:
    from crossmodal.backbones import TEXT_BACKBONES

    return f"auto | {' | '.join(TEXT_BACKBONES)}"


def _views_help() -> str:
    from crossmodal.backbones import IMAGE_VIEWS

    return (f"cache N views of every image (1-{len(IMAGE_VIEWS)}: {', '.join(IMAGE_VIEWS)}); training "
            "samples one per step, search uses their mean (N x the extraction time and disk)")


def _chunk_help() -> str:
    from crossmodal.resumable import FLUSH_SECONDS

    return (f"at most this many images per resumable chunk (each written atomically; one is also saved every "
            f"{FLUSH_SECONDS:g} s)")


@dataclass(frozen=True)
class Flag:
    help: str | Callable[[], str]  # a string, or a function building it (from a registry)
    type: Callable | None = str
    default: Callable[[ModuleType], Any] = lambda config: None  # from the config module
    options: dict = field(default_factory=dict)  # further add_argument options (action, choices)


def _config_default(name: str) -> Callable[[ModuleType], Any]:
    return lambda config: getattr(config, name)


def _library_default(module: str, name: str) -> Callable[[ModuleType], Any]:
    """A default owned by a library module, imported when the parser is built (after
    ``prepare_process``), so ``--help`` states the value the code uses."""
    return lambda config: getattr(importlib.import_module(module), name)


# Every flag of every stage script. A script may reword ``--out``'s help (what it writes differs).
FLAGS: dict[str, Flag] = {
    # data
    "images": Flag("folder of photos (default with an img2dataset --captions folder: that folder)", Path,
                   _config_default("IMAGES_DIR")),
    "captions": Flag("caption file, lines 'name.jpg#n<TAB>caption', or a folder of img2dataset output (shard "
                     "folders 00000/ or .tar shards of KEY.jpg + KEY.txt)", Path, _config_default("CAPTIONS_FILE")),
    "splits": Flag("folder of split lists train.txt, val.txt (or dev.txt), test.txt, or Karpathy's split file "
                   "dataset_flickr30k.json; default: config.SPLITS_DIR, or WORK_DIR/splits; a seeded split is "
                   "written there if absent", Path),
    "work-dir": Flag("where generated files go; default: the original layout, data/ and checkpoints/", Path,
                     _config_default("WORK_DIR")),
    "out": Flag("output folder", Path),
    "force": Flag("rebuild even if a finished cache exists", None, options={"action": "store_true"}),
    # backbones
    "image-backbone": Flag(_image_backbone_help, str, _config_default("IMAGE_BACKBONE")),
    "text-backbone": Flag(_text_backbone_help, str, _config_default("TEXT_BACKBONE")),
    "image-weights": Flag("a local weights file for the image backbone (else MODELS_DIR, its package or "
                          "download cache)", Path),
    "text-weights": Flag("a local model folder for the text backbone (else MODELS_DIR, its package or the hub)",
                         Path),
    "models-dir": Flag("local weights folder: resnet18.pth, bert-base-uncased/", Path, _config_default("MODELS_DIR")),
    "device": Flag("auto | cpu | cuda | cuda:N (auto: the GPU where there is one)", str, lambda config: "auto"),
    # extraction
    "views": Flag(_views_help, int, _config_default("IMAGE_VIEWS")),
    "precision": Flag("auto: bf16 autocast on a GPU, float32 on a CPU; bf16 also on a CPU (fast where it has AMX)",
                      str, lambda config: "auto", {"choices": ("auto", "bf16", "fp32")}),
    "decode": Flag("where JPEGs are decoded: worker processes (PIL) or the GPU (nvJPEG)", str,
                   lambda config: "cpu", {"choices": ("cpu", "gpu")}),
    "batch-size": Flag("items per forward pass; default: the extractor's (small on a CPU, large on a GPU)", int),
    "workers": Flag("decoding (or, with --decode gpu, file-reading) worker processes; default: the extractor's",
                    int),
    "chunk-size": Flag(_chunk_help, int,
                       _library_default("crossmodal.features.extract", "CHUNK_SIZE")),
    "ray": Flag(lambda: __import__("crossmodal.ray_cluster", fromlist=["RAY_HELP"]).RAY_HELP, str),
    "shard-rows": Flag("with --ray: rows per shard of the sharded cache (what a restarted run recomputes at most)", int,
                       _library_default("crossmodal.features.on_ray", "SHARD_ROWS")),
    "text-top-layers": Flag("also cache the input of the text encoder's last N layers, which run_train.py "
                            "--text-top-layers N trains with the heads (0 = none)", int,
                            _config_default("TEXT_TOP_LAYERS")),
    # training
    "ensemble": Flag("train N head pairs with seeds seed..seed+N-1 and serve them as one (N x the training time "
                     "and embedding width)", int, _config_default("ENSEMBLE")),
    "querybank-size": Flag("training captions and images kept in the checkpoint for querybank normalisation "
                           "(0 = off)", int, _config_default("QUERYBANK_SIZE")),
    "no-keywords": Flag("train on captions only (no keyword samples)", None, options={"action": "store_true"}),
    "resume": Flag("continue from OUT/last.pt (saved after every epoch and every --checkpoint-seconds within one) "
                   "with the same result as a run never stopped; on the same features, data and settings only, "
                   "except --epochs: another count is allowed, the learning-rate schedule is then rebuilt for it", None,
                   options={"action": "store_true"}),
    "checkpoint-seconds": Flag("seconds between saves of OUT/last.pt within an epoch (a killed run loses at most "
                               "about this much training)", float),
    # serving
    "checkpoint": Flag("trained checkpoint; default: WORK_DIR/checkpoints/best.pt (with --collection, the one it "
                       "was indexed with)", Path),
    "model": Flag("search zero-shot with an open_clip model's own towers, nothing trained: open_clip:ARCH:WEIGHTS, "
                  "WEIGHTS an open_clip pretrained tag or a local weights file or folder (e.g. "
                  "open_clip:ViT-B-32:laion2b_s34b_b79k); instead of --checkpoint. Its photo index is its own", str),
    "collection": Flag("the photo index (written by index_folder.py or --photos) to search instead of the dataset; "
                       "with --photos, where their index goes (default: WORK_DIR/photo_index, else "
                       "~/.local/share/crossmodal/photo_index)", Path),
    "photos": Flag("photo folders to bring up to date in the photo index (new, changed, moved and deleted "
                   "files) and to search: only photos under them are returned", Path,
                   options={"nargs": "+", "action": "extend"}),
    "image-features": Flag("image feature cache; default: WORK_DIR/image_embeddings", Path),
    "index": Flag("an on-disk index of the collection that build_index.py built: searched memory-mapped instead of "
                  "an index built in memory (for collections beyond memory; docs/scaling.md)", Path),
    "k": Flag("how many results (1 to 50)", int, _library_default("crossmodal.search", "TOP_K")),
    "host": Flag("address to listen on", str, _config_default("APP_HOST")),
    "port": Flag("port", int, _config_default("APP_PORT")),
    "json": Flag("print the hits as JSON", None, options={"action": "store_true"}),
    "like": Flag("more like this: a searched photo (its path or name) to find similar ones to, from its stored "
                 "vector (nothing is decoded); combined with the query text when one is given", Path),
    "image": Flag("a photo file to search with; combined with the query text when one is given "
                  "(\"this photo, but at night\")", Path),
    "ocr": Flag(lambda: __import__("crossmodal.ocr", fromlist=["HELP"]).HELP, None,
                options={"action": "store_true"}),
    "rescan-seconds": Flag("with --photos: look at the folders again this often, so new, moved and deleted photos "
                           "show without a restart (0: only at start)", float,
                           _library_default("crossmodal.photos.indexer", "RESCAN_SECONDS")),
    "upload-grace": Flag("seconds an uploaded photo stays on the server after its last search (a search of it again "
                         "meanwhile reuses it)", float, _library_default("crossmodal.web", "UPLOAD_GRACE_S")),
    # own-photo folders
    "duplicates": Flag("after indexing, print the groups of near-duplicate photos (copies, re-encodes, resizes, "
                       "light crops)", None, options={"action": "store_true"}),
    "duplicate-threshold": Flag("cosine similarity of two photos' backbone features above which --duplicates "
                                "groups them", float, _library_default("crossmodal.duplicates",
                                                                       "DUPLICATE_THRESHOLD")),
    # keywords
    "keywords": Flag("keyword file; default: the one sentence_augment.py writes for this --work-dir", Path),
    # evaluation
    "split": Flag("train | val (dev) | test", str, lambda config: "val"),
    "word-queries": Flag("one-word queries: the split's most frequent caption nouns (0 to skip)", int,
                         lambda config: 200),
    # demo data
    "num-images": Flag("how many demo images", int, _library_default("crossmodal.demo_data", "DEFAULT_NUM_IMAGES")),
    "seed": Flag("random seed", int, lambda config: 0),
    "image-size": Flag("square image side in pixels", int,
                       _library_default("crossmodal.demo_data", "DEFAULT_IMAGE_SIZE")),
    "no-progress": Flag("no progress bar", None, options={"action": "store_true"}),
    "verbose": Flag("debug logging", None, options={"action": "store_true"}),
    "threads": Flag("torch threads per query (a query is a few small tensor ops; concurrent queries run in "
                    "parallel instead; 0 = torch's default)", int, lambda config: 1),
}
# Serving finds the photos and captions where extraction recorded them, so there these two default to that.
SERVING_DATA_HELP = {
    "images": "the photos folder; default: the one recorded by the image extraction, else config.IMAGES_DIR",
    "captions": "caption file shown under results; default: the checkpoint's or extraction's, else "
                "config.CAPTIONS_FILE; optional",
}


class StageParser(argparse.ArgumentParser):
    """An ArgumentParser whose shared flags come from ``FLAGS``, with defaults from ``config``."""

    def __init__(self, description: str | None, config: ModuleType):
        super().__init__(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
        self.config = config

    def flags(self, *names: str, serving: bool = False, out_help: str | None = None,
              defaults: dict[str, Any] | None = None) -> None:
        """Add the named flags of ``FLAGS``. ``serving``: --images/--captions default to what extraction
        recorded; ``out_help`` says what --out is; ``defaults`` gives flags their default from a
        top-level module (which this library does not import), by flag name."""
        for name in names:
            flag = FLAGS[name]
            text = flag.help() if callable(flag.help) else flag.help
            default = (defaults or {}).get(name, flag.default(self.config))
            if serving and name in SERVING_DATA_HELP:
                text, default = SERVING_DATA_HELP[name], None
            if name == "out" and out_help:
                text = out_help
            if default is not None and flag.options.get("action") != "store_true":
                text += " (default: %(default)s)"
            kwargs = {"help": text, "default": default, **flag.options}
            if flag.type is not None:
                kwargs["type"] = flag.type
            self.add_argument(f"--{name}", **kwargs)

    def dataclass_flags(self, cls: type, defaults: Any) -> None:
        """A flag per field of dataclass ``cls``: its type from the annotation, its help from the field's
        ``metadata["help"]``, its default from the instance ``defaults``."""
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind = hints[f.name]
            if kind not in (int, float, str, bool):
                raise TypeError(f"{cls.__name__}.{f.name}: a flag needs int, float, str or bool, not {kind}")
            if "help" not in f.metadata:
                raise TypeError(f"{cls.__name__}.{f.name}: give the field metadata={{'help': ...}}")
            self.add_argument(f"--{f.name.replace('_', '-')}", type=_parse_bool if kind is bool else kind,
                              default=getattr(defaults, f.name),
                              help=f"{f.metadata['help']} (default: %(default)s)")

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        """Parse, set up logging (debug with --verbose), and attach ``args.layout`` (where generated files go)."""
        args = self.parse_args(argv)
        setup_logging(getattr(args, "verbose", False))
        captions = getattr(args, "captions", None)
        if (captions is not None and getattr(args, "images", None) == self.get_default("images")
                and Path(captions).is_dir()):
            args.images = captions  # img2dataset output: the images are in the captions' folder
        args.layout = Layout(getattr(args, "work_dir", None), Path(self.config.DATA_DIR),
                             Path(self.config.ROOT), Path(self.config.SPLITS_DIR))
        return args


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def print_entries(entries: list[dict], limit: int = 20) -> None:
    """Print manifest entries ``{"id", "reason"}`` one a line, at most ``limit`` of them."""
    for entry in entries[:limit]:
        print(f"  {entry['id']}: {entry['reason']}")
    if len(entries) > limit:
        print(f"  ... and {len(entries) - limit} more")


def splits_dir(args: argparse.Namespace) -> Path:
    return args.splits if args.splits else args.layout.default_splits()


def data_flags(args: argparse.Namespace, images: bool = True) -> str:
    """The data flags of this run, to append to a suggested command."""
    parts = []
    if images and getattr(args, "images", None):
        parts += ["--images", str(args.images)]
    if getattr(args, "captions", None):
        parts += ["--captions", str(args.captions)]
    if args.work_dir:
        parts += ["--work-dir", str(args.work_dir)]
    return " ".join(shlex.quote(p) for p in parts)


def train_hint(args: argparse.Namespace) -> str:
    """The command that trains the checkpoint these arguments look for."""
    return " ".join(["python", "run_train.py", data_flags(args)]).strip()


def photo_index_dir(args: argparse.Namespace) -> Path:
    """Where the photo index is: --collection (or index_folder.py's --out), else the layout's; with a
    zero-shot ``--model``, in that model's folder (an index holds one model's vectors: switching models
    must not embed every photo again)."""
    chosen = getattr(args, "collection", None) or getattr(args, "out", None)
    if chosen:
        return chosen
    if getattr(args, "model", None):
        from crossmodal.zero_shot import model_folder

        return model_folder(args.model, args.layout.models_base, args.models_dir) / args.layout.photo_index.name
    return args.layout.photo_index


class NotServable(RuntimeError):
    """What a script cannot open or serve as asked; the message says what to build or fix."""


@dataclass
class Opened:
    """What ``open_engine`` opened: the engine, and the indexing of ``--photos`` (a finished report, or
    a running ``IndexingThread`` for whatever shows its progress; None when nothing was indexed)."""
    engine: Any
    indexing: Any = None


def index_photo_folders(args: argparse.Namespace, state: dict, checkpoint: Path, *, background: bool = False) -> Any:
    """Bring the photo index up to date with ``args.photos`` for the checkpoint's image backbone:
    the IndexReport, or with ``background`` the started IndexingThread (which waits while another
    process indexes). StoreBusy when another process is indexing the same index."""
    from crossmodal.engine import load_image_backbone
    from crossmodal.features.extract import NUM_WORKERS
    from crossmodal.photos import IndexingThread, index_photos

    backbone = load_image_backbone(state["backbones"]["image"], getattr(args, "image_weights", None), args.models_dir)
    kwargs = dict(device=args.device, batch_size=getattr(args, "batch_size", None), checkpoint=checkpoint,
                  workers=NUM_WORKERS if getattr(args, "workers", None) is None else args.workers)
    if getattr(args, "ocr", False):
        from crossmodal.ocr import INSTALL_HINT, ocr_available, read_text

        if not ocr_available():
            raise OSError(INSTALL_HINT)
        kwargs["read_text"] = read_text
    if background:
        # A damaged index is repaired before the page opens it (the thread would, but after the page
        # had read it); skipped while another process indexes, which repairs it then.
        from crossmodal.photos import PhotoStore, StoreBusy, vector_identity

        with PhotoStore(photo_index_dir(args), repair=True) as store:
            try:
                with store.writing(vector_identity(backbone)):
                    pass
            except StoreBusy:
                pass
        every = getattr(args, "rescan_seconds", 0) or None
        thread = IndexingThread(photo_index_dir(args), args.photos, backbone, every=every, **kwargs)
        thread.start()
        return thread
    return index_photos(photo_index_dir(args), args.photos, backbone,
                        progress=not getattr(args, "no_progress", False), **kwargs)


def open_collection(args: argparse.Namespace, config: ModuleType, state: dict | None) -> Any:
    """The collection the arguments name: the photo index under ``--photos`` folders, the index in
    ``--collection`` (under ``--images`` when given), else the dataset's image feature cache."""
    from crossmodal.collection import DatasetCollection, recorded_images_root
    from crossmodal.features.cache import read_manifest
    from crossmodal.photos.collection import PhotoCollection

    if args.photos:
        return PhotoCollection.open(photo_index_dir(args), args.photos)
    if args.collection:
        collection = PhotoCollection.open(args.collection, [args.images] if args.images else None)
        roots = collection.roots
        if len(roots) > 1 and collection.root == collection.root.parent:
            collection.close()  # the page serves files under the folder the roots share: never the whole disk
            raise NotServable(f"the folders indexed in {args.collection} ({', '.join(roots)}) share no parent "
                              "folder; choose one with --images FOLDER")
        return collection
    features = args.image_features or args.layout.image_features
    recorded = (read_manifest(features) or {}).get("captions_file")
    candidates = [args.captions, (state or {}).get("captions_file"), recorded, config.CAPTIONS_FILE]
    captions = next((Path(c) for c in candidates if c and Path(c).is_file()), None)
    if args.captions and captions != args.captions:
        logging.getLogger("crossmodal.cli").warning("caption file %s not found; results are shown without captions",
                                                    args.captions)
    root = args.images or recorded_images_root(features) or Path(config.IMAGES_DIR)
    return DatasetCollection.open(features, root, captions)


def open_engine(args: argparse.Namespace, config: ModuleType, load_model: Callable, *,
                background: bool = False, load_text: bool = True) -> Opened:
    """The search engine app.py and search.py serve for their arguments (the composition root).

    With ``--photos`` the folders are brought up to date first (``background``: in a started thread,
    searched while it runs). ``load_model`` loads a checkpoint (``model.load_checkpoint``);
    ``load_text`` loads the text backbone now rather than at the first query (a missing one is said
    at once). NotServable when something must be fixed or built first, with the message saying what."""
    import torch

    from crossmodal.backbones import BackboneUnavailable
    from crossmodal.collection import CollectionError
    from crossmodal.engine import EngineError, SearchEngine
    from crossmodal.photos import StoreBusy, StoreError

    if getattr(args, "threads", 0):
        torch.set_num_threads(args.threads)
    indexing = None
    try:
        checkpoint = (args.checkpoint if args.collection and not args.photos and not getattr(args, "model", None)
                      else resolve_checkpoint(args))
        if args.collection and not args.photos:
            from crossmodal.photos import PhotoStore
            from crossmodal.photos.store import DB_FILE

            if not (Path(args.collection) / DB_FILE).is_file():
                raise NotServable(f"no photo index in {args.collection}; index a folder first with: "
                                  f"python index_folder.py PHOTO_FOLDER --out {shlex.quote(str(args.collection))}")
            if checkpoint is None:  # the checkpoint it was indexed with
                with PhotoStore(args.collection) as store:
                    checkpoint = Path(store.checkpoint() or "")
        if checkpoint is None or not Path(checkpoint).is_file():
            raise NotServable(f"no trained checkpoint at {checkpoint}; train one first with: {train_hint(args)}")
        model, state = load_model(checkpoint)
        if args.photos:
            try:
                indexing = index_photo_folders(args, state, checkpoint, background=background)
            except StoreBusy as err:
                logging.getLogger("crossmodal.cli").warning("%s; searching what it has indexed so far", err)
            except (OSError, sqlite3.OperationalError) as err:
                if not _read_only(err):
                    raise
                logging.getLogger("crossmodal.cli").warning(
                    "cannot update the photo index in %s (%s): searching it as it is", photo_index_dir(args),
                    getattr(err, "strerror", None) or err)
        collection = open_collection(args, config, state)
        try:
            engine = SearchEngine(collection, model, state, checkpoint, device=args.device,
                                  models_dir=args.models_dir, text_weights=args.text_weights,
                                  image_weights=getattr(args, "image_weights", None),
                                  index_folder=getattr(args, "index", None))
            if load_text:
                engine.query_text_encoder  # noqa: B018 - loaded now, not at the first query
        except BaseException:
            collection.close()
            raise
        release_free_memory()
        return Opened(engine, indexing)
    except (EngineError, CollectionError, BackboneUnavailable, StoreError, OSError, ValueError) as err:
        # (a CheckpointError is a ValueError; a missing folder an OSError)
        if background and indexing is not None:
            indexing.stop()
        raise NotServable(str(err)) from err


def _read_only(err: BaseException) -> bool:
    """An error of writing where one may only read (a read-only file system or folder)."""
    if isinstance(err, OSError):
        return err.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    return "readonly" in str(err) or "read-only" in str(err)


def resolve_checkpoint(args: argparse.Namespace) -> Path:
    """The checkpoint a script uses: ``--checkpoint``; with ``--model``, that zero-shot model's (written
    on first use: BackboneUnavailable without its weights); else the one trained in the work folder;
    else, where none was trained, the model that ships with the project (said in one log line); else
    the trained path, so the error names what to train."""
    if getattr(args, "model", None):
        if args.checkpoint:
            raise ValueError("--model and --checkpoint name two models: give one")
        from crossmodal.zero_shot import zero_shot_checkpoint

        return zero_shot_checkpoint(args.model, args.layout.models_base, args.models_dir)
    if args.checkpoint:
        return Path(args.checkpoint)
    trained = args.layout.best_checkpoint
    if trained.is_file():
        return trained
    from crossmodal.pretrained import shipped_checkpoint

    shipped = shipped_checkpoint(args.models_dir)
    if shipped is None:
        return trained
    logging.getLogger("cli").info("no trained checkpoint at %s: using the shipped model %s (%s)", trained, shipped,
                                  shipped.parent / "MODEL_CARD.md")
    return shipped
