"""Training the text encoder's last layers (``--text-top-layers``): the top on cached states equals the
encoder, the states cache resumes and refuses other texts, and the stages train, evaluate and serve
with the trained top (a tiny random BERT and random ResNet18 weights stand in for real ones)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import WORDS, save_random_models, save_tiny_bert, write_captioned_photos

from crossmodal.backbones import TextTop, create_text_backbone
from crossmodal.features.cache import StaleCacheError
from crossmodal.features.states import TextStates, extract_text_states, load_text_states, states_dir

TEXTS = ["a dog runs", "two men are running on the grass", "a girl", "the cat", "a woman and a child",
         "dogs", "a boy is running", "an old man"]


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    folder = save_tiny_bert(tmp_path_factory.mktemp("bert") / "bert-base-uncased")
    return create_text_backbone("bert-base-uncased", folder)


def tokenised(backbone, texts):
    return dict(backbone.tokenizer(texts, padding=True, return_tensors="pt"))


def test_top_on_trunk_states_is_the_encoder_and_serves_in_place(bert):
    batch = tokenised(bert, TEXTS)
    with torch.no_grad():
        whole = bert.forward_pooled(batch)
        top = TextTop.from_backbone(bert, 1).eval()
        assert torch.allclose(top(bert.trunk_states(batch, 1), batch["attention_mask"]), whole, atol=1e-5)
        rebuilt = TextTop.from_config(top.config_dict())  # from a checkpoint's plain config
        rebuilt.load_state_dict(top.state_dict())
        assert torch.allclose(rebuilt.eval()(bert.trunk_states(batch, 1), batch["attention_mask"]), whole, atol=1e-5)
        for p in top.parameters():  # "trained"
            p.add_(0.05 * torch.randn_like(p))
        trained = top(bert.trunk_states(batch, 1), batch["attention_mask"])
        assert not torch.allclose(trained, whole, atol=1e-3)
        served = create_text_backbone("bert-base-uncased", bert.model.name_or_path)
        served.set_top(top)
        assert torch.allclose(served.forward_pooled(batch), trained, atol=1e-5)
    with pytest.raises(ValueError, match="between 1 and 1"):
        TextTop.from_backbone(bert, 2)


def test_states_cache_rows_resume_and_refusals(bert, tmp_path):
    ids = [f"{i}.jpg#0" for i in range(len(TEXTS))]
    out = tmp_path / "text_embeddings-top1"
    extract_text_states(bert, TEXTS, ids, out, 1, part_texts=3, batch_size=2)
    expected = {"backbone": bert.name, "weights": bert.weights, "top_layers": 1}
    states = load_text_states(out, expected)
    assert len(states) == len(TEXTS)
    with torch.no_grad():
        for i, text in enumerate(TEXTS):
            one = tokenised(bert, [text])
            hidden, mask = states.batch([i])
            ref = bert.trunk_states(one, 1)[0]
            assert mask.sum() == len(ref)
            assert torch.allclose(hidden[0, : len(ref)], ref, atol=2e-3)  # float16 storage

    # killed before the end: finished parts stay, a damaged one and the missing one are made again
    (out / "manifest.json").unlink()
    (out / "part-00002.offsets.npy").unlink()
    (out / "part-00001.npy").write_bytes(b"not an array")
    kept = (out / "part-00000.npy").stat().st_mtime_ns
    extract_text_states(bert, TEXTS, ids, out, 1, part_texts=3)
    assert (out / "part-00000.npy").stat().st_mtime_ns == kept
    again = load_text_states(out, expected)
    assert torch.equal(again.states, states.states) and np.array_equal(again.offsets, states.offsets)

    with pytest.raises(StaleCacheError, match="other texts or another model"):
        extract_text_states(bert, TEXTS, ids[::-1], out, 1, part_texts=3)
    with pytest.raises(StaleCacheError, match="top_layers"):
        load_text_states(out, {**expected, "top_layers": 2}, rerun="python x.py")


def test_text_states_of_mixed_captions_and_keywords_keep_sample_order():
    from data_loader import SplitData

    g = torch.Generator().manual_seed(0)
    caps = TextStates(torch.randn(12, 4, generator=g).half(), np.array([0, 3, 5, 9, 12]))
    kws = TextStates(torch.randn(5, 4, generator=g).half(), np.array([0, 1, 2, 5]))
    data = SplitData(["a", "b"], torch.zeros(2, 3), torch.zeros(4, 4), np.array([0, 0, 1, 1]),
                     keyword_features=torch.zeros(3, 4), keyword_image=np.array([0, 1, 1]),
                     caption_states=caps, keyword_states=kws)
    hidden, mask = data.text_states([5, 1, 6, 0, 4])  # keyword 1, caption 1, keyword 2, caption 0, keyword 0
    for j, (states, row) in enumerate([(kws, 1), (caps, 1), (kws, 2), (caps, 0), (kws, 0)]):
        h, m = states.batch([row])
        assert int(mask[j].sum()) == int(m.sum())
        assert torch.equal(hidden[j, : int(m.sum())], h[0, : int(m.sum())])


def test_stages_train_evaluate_and_serve_with_a_trained_text_top(tmp_path, caplog):
    import batch_image_feature_extract
    import batch_text_feature_extract
    import evaluate
    import run_train
    from crossmodal.collection import DatasetCollection
    from crossmodal.engine import SearchEngine

    from model import load_checkpoint

    models = tmp_path / "models"
    models.mkdir()
    save_random_models(models, WORDS)  # models/resnet18.pth, models/bert-base-uncased/
    data, _, captions = write_captioned_photos(tmp_path, 24, dev=8, words_per_caption=5)
    data += ["--models-dir", str(models)]
    images, work = tmp_path / "images", tmp_path / "work"
    train_args = data + ["--no-keywords", "--epochs", "2", "--batch-size", "4", "--hidden-dim", "16",
                         "--embed-dim", "8", "--threads", "1", "--bf16", "off", "--querybank-size", "0",
                         "--text-top-layers", "1", "--top-lr-scale", "1", "--lr", "3e-3"]
    assert batch_image_feature_extract.main(data + ["--image-backbone", "resnet18"]) == 0
    assert batch_text_feature_extract.main(data[2:4] + data[6:] + ["--text-backbone", "bert-base-uncased"]) == 0
    caplog.clear()
    assert run_train.main(train_args) == 2  # no states yet: the error names the command that makes them
    error = next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "batch_text_feature_extract.py" in error and "--text-top-layers 1" in error
    assert batch_text_feature_extract.main(data[2:4] + data[6:] + ["--text-backbone", "bert-base-uncased",
                                                                   "--text-top-layers", "1"]) == 0
    assert states_dir(work / "text_embeddings", 1).is_dir()
    assert run_train.main(train_args) == 0

    checkpoint = work / "checkpoints" / "best.pt"
    model, state = load_checkpoint(checkpoint)
    assert state["model_config"]["text_top"]["layers"] == 1 and state["train_config"]["text_top_layers"] == 1
    published = create_text_backbone("bert-base-uncased", models / "bert-base-uncased")
    last = published.model.encoder.layer[-1].state_dict()
    assert any(not torch.equal(v, last[k]) for k, v in model.text_top.layers[0].state_dict().items())

    # search embeds a query through trunk, trained top and head; not through the published encoder
    engine = SearchEngine(DatasetCollection.open(work / "image_embeddings", images, captions), model, state,
                          checkpoint, models_dir=models, device="cpu")
    query = "a dog runs on the grass"
    batch = tokenised(published, [query])
    with torch.no_grad():
        via_top = model.encode_text(model.text_top.eval()(published.trunk_states(batch, 1), batch["attention_mask"]))
        frozen = model.encode_text(published.forward_pooled(batch))
    assert np.allclose(engine.embed_text(query), via_top.numpy().reshape(-1), atol=1e-5)
    assert not np.allclose(engine.embed_text(query), frozen.numpy().reshape(-1), atol=1e-3)

    # evaluation re-encodes the captions the same way, and finds what validation found on the cached states
    assert evaluate.main(data + ["--checkpoint", str(checkpoint), "--split", "dev", "--word-queries", "0"]) == 0
    import json

    report = json.loads((work / "results" / "eval_val.json").read_text())
    row = next(v for k, v in report["results"].items() if k.startswith("trained"))
    assert row["rsum"] == pytest.approx(state["metrics"]["rsum"], abs=1e-6)

    caplog.clear()  # one text encoder cannot serve several trained tops
    assert run_train.main(train_args + ["--ensemble", "2", "--out", str(tmp_path / "ens")]) == 2
    assert "--ensemble" in next(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
