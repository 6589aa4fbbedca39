"""The backbone registry: every frozen image and text encoder is built here, and only here.

Each entry owns its weights lookup, its preprocessing and its output size, and reports a
``weights`` identity that feature caches record so features of different models never mix.

Image entries: ``resnet18`` (torchvision), ``efficientnet_lite0/1/2`` (offline pip packages); any of
them can pool several views of each image (``IMAGE_VIEWS``, ``ImageBackbone.set_views``), and
``"a+b"`` runs several of them on the same views with their features side by side.
The ``open_clip`` family: ``open_clip:ARCH:WEIGHTS`` names the image or text tower of an open_clip
model (``openclip.py``), with open_clip's own preprocessing and tokenizer.
Text entries: ``bert-base-uncased`` (local folder or hub), ``minilm`` (offline pip package), and
``<name>-last3`` of each: the mean pools of its last three layers concatenated instead of the last
layer's alone (earlier layers keep word-level detail the sentence-similarity training pooled away).
``TextTop``: an encoder's last layers with its pooling, trained with the heads and served in place.
``auto`` picks the original pair (ResNet18 + BERT) where their weights are present, else the
offline pair, and logs one line saying which and why.

One module per concept, imported in one direction: ``registry`` (the tables entries register in; it
imports no sibling), ``views`` (the views of an image), ``image`` (``ImageBackbone`` and the image
entries) and ``text`` (``TextBackbone`` and the text entries), which register themselves in it,
``openclip`` (the open_clip family, built on both, registering itself too), ``onnx_text`` (a text
backbone exported for ONNX Runtime, which encodes queries where an index keeps one), and ``factory``
above them all (``create_image_backbone``, ``create_text_backbone``, ``auto``). Every name is importable from
``crossmodal.backbones``.
"""
from crossmodal.backbones.factory import (
    OFFLINE_PAIR,
    ORIGINAL_PAIR,
    create_image_backbone,
    create_text_backbone,
    resolve_names,
)
from crossmodal.backbones.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RESNET18_FILE,
    ImageBackbone,
    Normalize,
    combine,
    resnet18,
)
from crossmodal.backbones.onnx_text import QUERY_ENCODER_FILE, OnnxTextEncoder, ensure_exported, open_text_encoder
from crossmodal.backbones.openclip import OpenClipTextBackbone
from crossmodal.backbones.registry import (
    BUILD_LOCK,
    FAMILIES,
    IMAGE_BACKBONES,
    TEXT_BACKBONES,
    BackboneUnavailable,
    family_of,
    file_digest,
    register_family,
    register_image,
    register_text,
    resolve_device,
)
from crossmodal.backbones.text import (
    BERT_FOLDER,
    LAST_LAYERS,
    TEXT_BATCH_SIZE,
    TEXT_MAX_LENGTH,
    TextBackbone,
    TextTop,
    bert_base_uncased,
    minilm,
)
from crossmodal.backbones.views import IMAGE_VIEWS, ONE_VIEW, first_views, make_view, views_mismatch, views_of

__all__ = [
    # registry and factory
    "IMAGE_BACKBONES", "TEXT_BACKBONES", "register_image", "register_text", "ORIGINAL_PAIR", "OFFLINE_PAIR",
    "resolve_names", "create_image_backbone", "create_text_backbone", "BackboneUnavailable", "resolve_device",
    "file_digest", "FAMILIES", "family_of", "register_family", "BUILD_LOCK",
    # a text backbone exported for ONNX Runtime (query encoding)
    "QUERY_ENCODER_FILE", "OnnxTextEncoder", "ensure_exported", "open_text_encoder",
    # the open_clip family (open_clip:ARCH:WEIGHTS)
    "OpenClipTextBackbone",
    # views
    "IMAGE_VIEWS", "ONE_VIEW", "first_views", "views_of", "views_mismatch", "make_view",
    # image
    "IMAGENET_MEAN", "IMAGENET_STD", "RESNET18_FILE", "ImageBackbone", "Normalize", "combine", "resnet18",
    # text
    "TEXT_MAX_LENGTH", "TEXT_BATCH_SIZE", "BERT_FOLDER", "LAST_LAYERS", "TextBackbone", "TextTop", "bert_base_uncased",
    "minilm",
]
