"""Datasets: CIFAR-10/100, ImageNet-style folders (with a preflight), Fashion-MNIST, synthetic.

`build_dataset(config, split, transform)` returns a map-style dataset of (transformed image, label).
Images reach the transform as RGB PIL images whatever the source (Fashion-MNIST gray is expanded to
3 channels), so every stage uses the same transform code on every dataset; `keep_gray=True` hands
grey sources over as single-channel 'L' images instead, for transforms that end in three channels
(the pretraining views: pretrain/augment.py).
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import json
import math
import os
import sys
import zlib
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar, Iterator

import numpy as np
from PIL import Image
from torch.utils.data import Dataset, Subset
from torchvision import datasets
from torchvision.datasets.utils import check_integrity

from common import dist
from common.config import ConfigError, added_field
from common.encoded_images import read_encoded, to_rgb
from common.errors import DatasetFileError, TrainingAborted

DATASETS = ("cifar10", "cifar100", "imagenet", "imagefolder", "fashion_mnist", "synthetic")
IMAGENET_TRAIN_IMAGES = 1_281_167
IMAGENET_VAL_IMAGES = 50_000
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass
class DataConfig:
    """Which images to read. `root` is the dataset folder (ImageNet: the folder with train/ and val/)."""
    RANGES: ClassVar[dict[str, str]] = {"num_workers": "[0, inf)", "train_subset": "[0, inf)",
        "test_subset": "[0, inf)", "max_bad_images": "[0, inf)", "synthetic_train_size": "[1, inf)",
        "synthetic_test_size": "[1, inf)", "synthetic_classes": "[1, inf)",
        "synthetic_image_size": "[1, inf)", "validation_size": "[0, inf)"}

    dataset: str = "synthetic"  # cifar10 | cifar100 | imagenet | imagefolder | fashion_mnist | synthetic
    root: str = "data"  # the dataset folder (not hashed: a fingerprint of folder data is)
    download: bool = False  # CIFAR / Fashion-MNIST through torchvision; off for offline clusters
    num_workers: int = 4  # loader worker processes per training process
    train_subset: int = 0  # use only the first N training images (0 = all); for demos and smoke runs
    test_subset: int = 0  # use only the first N test images (0 = all)
    allow_partial: bool = False  # accept an ImageNet folder whose counts differ from ImageNet-1K
    max_bad_images: int = 100  # unreadable files skipped before a run aborts (distinct paths)
    synthetic_train_size: int = 512  # generated training images (dataset=synthetic)
    synthetic_test_size: int = 128  # generated test images (dataset=synthetic)
    synthetic_classes: int = 8  # classes of the generated images
    synthetic_image_size: int = 32  # side of the generated images in pixels
    # Hold out N training images (a fixed seeded draw among the first train_subset) as the validation
    # split: no stage reads them as training images; tuning ranks its trials on them, never on the test set
    validation_size: int = added_field(0)

    def check(self) -> None:
        if self.dataset not in DATASETS:
            raise ConfigError(f"dataset {self.dataset!r} is not one of {', '.join(DATASETS)}")
        if self.train_subset and self.validation_size >= self.train_subset:
            raise ConfigError(f"validation_size {self.validation_size} leaves no training image of the "
                              f"train_subset of {self.train_subset}: hold out fewer, or raise train_subset")


def num_classes(config: DataConfig) -> int:
    if config.dataset in ("cifar10", "fashion_mnist"):
        return 10
    if config.dataset == "cifar100":
        return 100
    if config.dataset == "imagenet":
        return 1000
    if config.dataset == "synthetic":
        return config.synthetic_classes
    return len(preflight_image_folder(Path(config.root) / "train").classes)


class ArrayImageDataset(Dataset):
    """Images held in memory as uint8 arrays (N, H, W) or (N, H, W, 3) with integer labels; grey
    (N, H, W) images reach the transform as RGB, or as 'L' with `keep_gray`."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable | None = None,
                 keep_gray: bool = False):
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        self.images, self.labels, self.transform = images, labels.astype(np.int64), transform
        self.mode = "L" if keep_gray and images.ndim == 3 else "RGB"

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = Image.fromarray(self.images[index]).convert(self.mode)
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])


def synthetic_arrays(size: int, classes: int, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-conditional images: each class is a smooth random colour field; each image is its class
    field, rolled by a random shift, with pixel noise. Learnable but not trivial. -> (N,H,W,3), (N,)"""
    class_rng = np.random.default_rng(12345)  # class prototypes are shared by train and test splits
    coarse = class_rng.uniform(0, 255, size=(classes, 4, 4, 3))
    prototypes = np.stack([np.array(Image.fromarray(c.astype(np.uint8)).resize(
        (image_size, image_size), Image.BICUBIC)) for c in coarse]).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=size)
    shifts = rng.integers(-image_size // 4, image_size // 4 + 1, size=(size, 2))
    images = np.empty((size, image_size, image_size, 3), dtype=np.uint8)
    for i, (label, (dy, dx)) in enumerate(zip(labels, shifts)):
        noisy = np.roll(prototypes[label], (dy, dx), axis=(0, 1)) + rng.normal(0, 25, prototypes[label].shape)
        images[i] = np.clip(noisy, 0, 255).astype(np.uint8)
    return images, labels


GZIP_MAGIC = b"\x1f\x8b"
IDX_UNSIGNED_BYTES = 0x08  # the IDX data type of MNIST-style files
IDX_KINDS = {1: "labels", 3: "images"}  # what an IDX file of Fashion-MNIST holds, by its number of dimensions
FASHION_MNIST_IMAGE_SIZE = 28
FASHION_MNIST_CLASSES = 10
FASHION_MNIST_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


def _file_bytes(path: Path) -> bytes:
    """The contents of `path`, decompressed when they are gzip (whatever the name says: a file
    uncompressed but still named .gz reads as well). Raises DatasetFileError for an empty file, a .gz
    file that is not gzip (an error page saved by a failed download), and gzip that is cut short or
    fails its checksum (gzip's own EOFError and BadGzipFile name no file), or that the disk cannot read."""
    try:
        data = path.read_bytes()
    except OSError as error:  # a failing disk or network mount (EIO), a file without read permission
        raise DatasetFileError(f"{path} cannot be read: {error.strerror or error}") from None
    if not data:
        raise DatasetFileError(f"{path} is empty (0 bytes)")
    if not data.startswith(GZIP_MAGIC):
        if path.suffix == ".gz" and not data.startswith(b"\x00\x00"):  # IDX files start with two zero bytes
            raise DatasetFileError(f"{path} is not a gzip file: it starts with {data[:16]!r}")
        return data  # uncompressed; the IDX header check names anything else
    try:
        return gzip.decompress(data)
    except EOFError:
        raise DatasetFileError(f"{path} is cut short: its gzip stream ends before its end marker "
                               f"({len(data):,} bytes on disk; a truncated download or copy)") from None
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DatasetFileError(f"{path} is corrupted: {error}") from None


def _read_idx(path: Path, dimensions: int) -> np.ndarray:
    """An IDX file (MNIST format, gzipped or not) of unsigned bytes with `dimensions` axes, e.g.
    (N, 28, 28) images or (N,) labels. Only the header and the sizes are checked (no pass over the
    pixels); a file whose data is shorter or longer than its header says is refused, not reshaped."""
    data = _file_bytes(path)
    kind = IDX_KINDS.get(dimensions, f"{dimensions}-dimensional data")
    expected_magic = bytes((0, 0, IDX_UNSIGNED_BYTES, dimensions))
    if data[:4] != expected_magic:
        raise DatasetFileError(f"{path} is not an IDX file of {kind}: its magic number is 0x{data[:4].hex()}, "
                               f"expected 0x{expected_magic.hex()} (unsigned bytes, {dimensions} dimension(s))")
    header_size = 4 + 4 * dimensions
    if len(data) < header_size:
        raise DatasetFileError(f"{path} is cut short inside its header ({len(data)} of {header_size} bytes)")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dimensions))
    expected, found = math.prod(shape), len(data) - header_size
    if found != expected:
        sizes = " x ".join(f"{size:,}" for size in shape)
        difference = (f"cut short by {expected - found:,} bytes" if found < expected
                      else f"{found - expected:,} bytes more than that")
        raise DatasetFileError(f"{path} holds {found:,} bytes of {kind}, its header says {sizes} = {expected:,}: "
                               f"{difference}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(shape)


def _check_fashion_mnist(images_path: Path, images: np.ndarray, labels_path: Path, labels: np.ndarray) -> None:
    """What a well-formed pair of IDX files can still get wrong: image size, counts, label values."""
    if images.shape[1:] != (FASHION_MNIST_IMAGE_SIZE,) * 2:
        raise DatasetFileError(f"{images_path} holds {images.shape[1]}x{images.shape[2]} images; Fashion-MNIST's "
                               f"are {FASHION_MNIST_IMAGE_SIZE}x{FASHION_MNIST_IMAGE_SIZE}")
    if len(images) != len(labels):
        raise DatasetFileError(f"{images_path} holds {len(images):,} images but {labels_path} holds "
                               f"{len(labels):,} labels (files of different copies or a damaged one)")
    largest = int(labels.max(initial=0))  # one pass over N bytes: the labels, not the pixels
    if largest >= FASHION_MNIST_CLASSES:
        raise DatasetFileError(f"{labels_path} holds label {largest}; Fashion-MNIST's labels are 0 to "
                               f"{FASHION_MNIST_CLASSES - 1}")


def _repair_hint(folder: Path) -> str:
    if folder == DEBIAN_FASHION_MNIST:
        return "reinstall it: apt-get install --reinstall dataset-fashion-mnist"
    return "replace it with a good copy, or delete it and run once with data.download=true"


def _find_idx(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / "FashionMNIST" / "raw" / stem,
                      folder / "FashionMNIST" / "raw" / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _fashion_mnist_files(root: Path, prefix: str) -> tuple[Path, Path] | None:
    """(images file, labels file) of split `prefix` in `root`, or None when `root` holds no file of the
    set. A root holding part of the set is the dataset folder: a missing file is named rather than taken
    from elsewhere (one split, or one file of a split, from another copy would pass unnoticed)."""
    found = {stem: _find_idx(root, stem) for stem in FASHION_MNIST_STEMS}
    if not any(found.values()):
        return None
    wanted = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    missing = [stem for stem in wanted if found[stem] is None]
    if missing:
        present = ", ".join(str(path.relative_to(root)) for path in found.values() if path is not None)
        raise FileNotFoundError(f"Fashion-MNIST: {root} holds {present} but no {missing[0]} (or {missing[0]}.gz); "
                                "add it, or set data.download=true to fetch the missing files")
    return found[wanted[0]], found[wanted[1]]


def fashion_mnist_arrays(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST from IDX files in `root` (Debian's dataset-fashion-mnist layout) or in
    torchvision's root/FashionMNIST/raw layout; from Debian's copy, saying so, when `root` holds none.
    Returns images (N, 28, 28) and labels (N,), uint8. A damaged file raises DatasetFileError naming it."""
    prefix = "train" if train else "t10k"
    searched = [Path(root), DEBIAN_FASHION_MNIST]
    for folder in searched:
        files = _fashion_mnist_files(folder, prefix)
        if files is None:
            continue
        if folder != Path(root) and dist.is_main_process():
            print(f"[data] data.root {root} holds no Fashion-MNIST files; reading the {prefix} split from the "
                  f"system's copy in {folder}", file=sys.stderr)
        images_path, labels_path = files
        try:
            images, labels = _read_idx(images_path, 3), _read_idx(labels_path, 1)
            _check_fashion_mnist(images_path, images, labels_path, labels)
        except DatasetFileError as error:
            raise DatasetFileError(f"Fashion-MNIST: {error}; {_repair_hint(folder)}") from None
        return images, labels
    raise FileNotFoundError(
        f"Fashion-MNIST {prefix}-images/labels IDX files not found in {' or '.join(map(str, searched))}. "
        "Install Debian's dataset-fashion-mnist, or set data.download=true to fetch it with torchvision."
    )


def holds_fashion_mnist_split(root: Path, train: bool) -> bool:
    """Whether `root` itself holds the split's two files (damaged or not): nothing to download."""
    prefix = "train" if train else "t10k"
    return all(_find_idx(Path(root), f"{prefix}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"))


@dataclass
class FolderSummary:
    classes: list[str]
    num_images: int


@dataclass(frozen=True)
class FolderScan:
    """An ImageFolder tree as the dataset reads it: classes (sorted), samples (path, class index) in
    torchvision's ImageFolder order, and the image files' total size in bytes."""

    classes: tuple[str, ...]
    samples: tuple[tuple[str, int], ...]
    total_bytes: int

    def count(self, class_index: int) -> int:
        return sum(1 for _, label in self.samples if label == class_index)


def _walk_images(directory: str, ancestors: frozenset = frozenset()) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """(folder, [(image file name, bytes)]) for `directory` and every folder below it, following
    symbolic links as the dataset does, and refusing a link that leads back to a folder above it
    (a loop would count its images forever)."""
    real = os.path.realpath(directory)
    if real in ancestors:
        raise ValueError(f"symbolic link loop: {directory} leads back to {real}, a folder that contains it; "
                         "remove or fix that link")
    ancestors = ancestors | {real}
    files, folders = [], []
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.is_dir():
                folders.append(entry.path)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS) and entry.is_file():
                files.append((entry.name, entry.stat().st_size))
    yield directory, files
    for folder in folders:
        yield from _walk_images(folder, ancestors)


def _folder_state(root: Path) -> tuple:
    """What invalidates a cached scan: the root's and its class folders' modification times."""
    return tuple((entry.name, entry.stat().st_mtime_ns) for entry in os.scandir(root) if entry.is_dir()) + (
        root.stat().st_mtime_ns,)


@functools.lru_cache(maxsize=16)
def _scan(root: str, state: tuple) -> FolderScan:
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    samples, total = [], 0
    for index, name in enumerate(classes):
        for folder, files in sorted(_walk_images(os.path.join(root, name))):
            for file_name, size in sorted(files):
                samples.append((os.path.join(folder, file_name), index))
                total += size
    return FolderScan(tuple(classes), tuple(samples), total)


def scan_image_folder(root: Path) -> FolderScan:
    """One walk of an ImageFolder tree, shared by the preflight, the dataset and the fingerprint
    (cached per process until a class folder changes)."""
    root = Path(root)
    return _scan(os.path.realpath(root), _folder_state(root))


def _count_images(folder: Path) -> int:
    return sum(len(files) for _, files in _walk_images(str(folder)))


def preflight_image_folder(root: Path, expected_classes: int | None = None,
                           expected_images: int | None = None) -> FolderSummary:
    """Check an ImageFolder root (one sub-folder of images per class) before any training starts.

    Raises FileNotFoundError / ValueError whose message names what was expected and what was found.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    subfolders = sorted(p for p in root.iterdir() if p.is_dir())
    loose_images = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not subfolders:
        if loose_images:
            raise ValueError(f"{root} holds {len(loose_images)} images but no class folders: it looks "
                             "like a single class folder; point to its parent (expected ROOT/CLASS/IMAGE)")
        raise ValueError(f"{root} is empty: expected one folder of images per class")
    names = {p.name for p in subfolders}
    split_like = sorted(names & {"train", "val", "test"})
    if split_like and all(any(q.is_dir() for q in (root / s).iterdir()) for s in split_like):
        raise ValueError(f"{root} contains split folders {split_like}: it looks like the parent "
                         f"folder; point to {root / split_like[0]} (expected ROOT/CLASS/IMAGE)")
    scan = scan_image_folder(root)  # one pass: ImageNet has 1.28M files
    counts = Counter(scan.classes[label] for _, label in scan.samples)
    counts = {name: counts.get(name, 0) for name in scan.classes}
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        raise ValueError(f"{len(empty)} class folder(s) in {root} hold no images: {', '.join(empty[:5])}")
    total = sum(counts.values())
    found = f"found {len(subfolders)} classes and {total:,} images in {root}"
    if expected_classes is not None and len(subfolders) != expected_classes:
        raise ValueError(f"expected {expected_classes} classes, {found}")
    if expected_images is not None and total != expected_images:
        raise ValueError(f"expected {expected_images:,} images, {found}")
    return FolderSummary([p.name for p in subfolders], total)


BAD_IMAGE_LOG_PREFIX = "bad_images."


class RobustImageFolder(Dataset):
    """An ImageFolder whose unreadable files (truncated, zero-byte, not an image) are skipped.

    Every image is decoded to RGB (CMYK, grayscale and palette files included; the format comes
    from the content, so a PNG named .JPEG loads). A file that fails is logged to
    `<bad_image_log>/bad_images.<pid>.log` -- one file per process, loader workers included -- and
    the next sample in index order takes its place, so batches keep their size and stay
    deterministic. `count_bad_images` reads the logs back. With `decode=False` samples are
    `EncodedImage`s (JPEG bytes for the training device to decode; other files decoded here).
    """

    MAX_CONSECUTIVE_FAILURES = 32

    def __init__(self, root: str, transform: Callable | None, bad_image_log: Path | None = None,
                 decode: bool = True):
        scan = scan_image_folder(Path(root))  # the files the preflight counted, in ImageFolder's order
        self.root, self.samples, self.classes = root, list(scan.samples), list(scan.classes)
        self.transform, self.bad_image_log, self.decode = transform, bad_image_log, decode

    def __len__(self) -> int:
        return len(self.samples)

    def _record(self, path: str, error: Exception) -> None:
        if self.bad_image_log is None:
            return
        Path(self.bad_image_log).mkdir(parents=True, exist_ok=True)
        message = f"{type(error).__name__}: {error}".replace("\t", " ").replace("\n", " ")
        with open(Path(self.bad_image_log) / f"{BAD_IMAGE_LOG_PREFIX}{os.getpid()}.log", "a") as handle:
            handle.write(f"{path}\t{message}\n")

    def __getitem__(self, index: int):
        for attempt in range(self.MAX_CONSECUTIVE_FAILURES):
            path, label = self.samples[(index + attempt) % len(self.samples)]
            try:
                if self.decode:
                    with Image.open(path) as opened:
                        image = to_rgb(opened)  # forces the full decode: truncation fails here
                else:
                    image = read_encoded(Path(path).read_bytes())
            except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
                self._record(path, error)
                failure = error
                continue
            return (self.transform(image) if self.transform is not None else image), label
        raise self._too_many_failures(index, path, failure)

    def _too_many_failures(self, index: int, last_path: str, error: Exception) -> TrainingAborted:
        """The stop after MAX_CONSECUTIVE_FAILURES unreadable files in a row: not scattered damage that
        skipping absorbs but a broken folder, named with its first and last file (one line: it reaches
        the user through a loader worker)."""
        first_path = self.samples[index % len(self.samples)][0]
        reason = f"{type(error).__name__}: {error}".replace("\n", " ")
        listed = f"; all are listed in {self.bad_image_log}" if self.bad_image_log is not None else ""
        return TrainingAborted(f"{self.MAX_CONSECUTIVE_FAILURES} unreadable images in a row in {self.root}, from "
                               f"{first_path} to {last_path} ({reason}){listed}; replace or remove them")


def count_bad_images(log_dir: Path) -> Counter:
    """{path: number of failed reads} over every process's log in `log_dir`."""
    counts: Counter = Counter()
    if not Path(log_dir).is_dir():
        return counts
    for log in Path(log_dir).glob(f"{BAD_IMAGE_LOG_PREFIX}*.log"):
        for line in log.read_text().splitlines():
            if line:
                counts[line.split("\t", 1)[0]] += 1
    return counts


def check_split_root(root: Path) -> None:
    """data.root must hold train/ and val/ ImageFolder trees; name the likely mistake otherwise."""
    if not root.is_dir():
        raise FileNotFoundError(f"data.root {root} does not exist")
    if (root / "train").is_dir():
        return
    children = sorted(p for p in root.iterdir() if p.is_dir())
    holding_split = [p for p in children if (p / "train").is_dir()]
    if holding_split:
        raise ValueError(f"data.root {root} looks like the parent folder: {holding_split[0]} holds train/; "
                         f"set data.root={holding_split[0]}")
    if children and any(_count_images(p) for p in children[:5]):
        raise ValueError(f"data.root {root} looks like a split folder itself (class folders of images); "
                         f"set data.root to its parent, which must hold train/ and val/")
    found = ", ".join(p.name for p in list(root.iterdir())[:8]) or "nothing"
    raise FileNotFoundError(f"expected {root}/train and {root}/val (one folder of images per class); found: {found}")


def dataset_fingerprint(config: DataConfig) -> str:
    """What a run reads beyond its config, for its identity: for folder datasets (ImageNet, ImageFolder)
    a digest of each split's class names, image count and total bytes, so that another root with other
    images is another run while the same images mounted elsewhere (another cluster) keep the run's
    identity. "" for datasets whose content the config fixes (CIFAR, Fashion-MNIST, synthetic)."""
    if config.dataset not in ("imagenet", "imagefolder"):
        return ""
    root = Path(config.root)
    check_split_root(root)
    splits = {}
    for split in ("train", "val"):
        if (root / split).is_dir():
            scan = scan_image_folder(root / split)
            splits[split] = [list(scan.classes), len(scan.samples), scan.total_bytes]
    return hashlib.sha256(json.dumps(splits, sort_keys=True).encode()).hexdigest()[:16]


def cifar_folder_problem(dataset_class: type, root: Path, name: str) -> Exception | None:
    """Why torchvision refused a CIFAR folder, which it says only as 'not found or corrupted': the files
    missing from it, else those whose checksum is not the published one. None when the folder is absent
    or every file is whole. Asked only after a refusal: the checksums are one more pass over the files."""
    folder = root / dataset_class.base_folder
    if not folder.is_dir():
        return None
    expected = [*dataset_class.train_list, *dataset_class.test_list,
                (dataset_class.meta["filename"], dataset_class.meta["md5"])]
    missing = [file_name for file_name, _ in expected if not (folder / file_name).is_file()]
    if missing:
        return FileNotFoundError(f"{name}: {folder} lacks {', '.join(missing)}; copy the whole folder again, or "
                                 f"delete it and set data.download=true")
    damaged = [str(folder / file_name) for file_name, checksum in expected
               if not check_integrity(str(folder / file_name), checksum)]
    if not damaged:
        return None
    return DatasetFileError(f"{name}: {', '.join(damaged)} {'does' if len(damaged) == 1 else 'do'} not match the "
                            "published checksum (cut short or corrupted); replace it with a good copy, or delete "
                            f"{folder} and set data.download=true")


def _subset(dataset: Dataset, count: int) -> Dataset:
    return Subset(dataset, range(min(count, len(dataset)))) if count else dataset


SPLITS = ("train", "validation", "test")
# The validation draw's seed: fixed, not the run's, so that every run of a tuning (every method, point
# and seed) ranks on the same held-out images and trains on the same others.
VALIDATION_SEED = 0


def validation_indices(train_size: int, validation_size: int) -> np.ndarray:
    """Indices (sorted) of the `validation_size` images held out of `train_size` training images: a
    seeded draw without replacement, the same for every run with these two numbers. Spread over the
    whole training set rather than its last images, so the split has the training set's classes."""
    if validation_size >= train_size:
        raise ConfigError(f"data.validation_size={validation_size} holds out every one of the {train_size} "
                          "training images: hold out fewer")
    return np.sort(np.random.default_rng(VALIDATION_SEED).permutation(train_size)[:validation_size])


def _split_validation(dataset: Dataset, split: str, validation_size: int) -> Dataset:
    """The training images without the validation split ('train'), or the split alone ('validation')."""
    if not validation_size:
        if split == "validation":
            raise ConfigError("the validation split needs data.validation_size > 0 (the training images to hold out)")
        return dataset
    held_out = validation_indices(len(dataset), validation_size)
    if split == "validation":
        return Subset(dataset, held_out.tolist())
    kept = np.ones(len(dataset), dtype=bool)
    kept[held_out] = False
    return Subset(dataset, np.flatnonzero(kept).tolist())


def build_dataset(config: DataConfig, split: str, transform: Callable | None,
                  bad_image_log: Path | None = None, decode: bool = True, keep_gray: bool = False) -> Dataset:
    """The `split` of the configured dataset, yielding (transform(image), label): 'test', or the
    training images (the first `train_subset`) divided into 'validation' (the `validation_size` held
    out, see `validation_indices`) and 'train' (the others; all of them without a validation split).

    Folder datasets skip unreadable files, logging them under `bad_image_log` (see RobustImageFolder);
    with `decode=False` they yield `EncodedImage`s for the training device to decode (the others,
    already in memory, yield PIL images either way); with `keep_gray` a grey dataset (Fashion-MNIST)
    yields single-channel 'L' images instead of their RGB expansion.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    train = split != "test"  # the validation images are training images held out
    if config.dataset in ("cifar10", "cifar100"):
        cls = datasets.CIFAR10 if config.dataset == "cifar10" else datasets.CIFAR100
        try:
            dataset = cls(config.root, train=train, download=config.download, transform=transform)
        except RuntimeError as error:
            raise cifar_folder_problem(cls, Path(config.root), config.dataset) or FileNotFoundError(
                f"{config.dataset} not found under {config.root} ({error}); set data.download=true or "
                "data.root to the folder holding it") from None
    elif config.dataset in ("imagenet", "imagefolder"):
        check_split_root(Path(config.root))
        folder = Path(config.root) / ("train" if train else "val")
        strict = config.dataset == "imagenet" and not config.allow_partial
        preflight_image_folder(
            folder,
            expected_classes=1000 if strict else None,
            expected_images=(IMAGENET_TRAIN_IMAGES if train else IMAGENET_VAL_IMAGES) if strict else None,
        )
        dataset = RobustImageFolder(str(folder), transform, bad_image_log, decode)
    elif config.dataset == "fashion_mnist":
        if config.download and not holds_fashion_mnist_split(Path(config.root), train):
            # Only what is missing: torchvision parses the files it finds with assertions, and the
            # reader below names what is wrong with a damaged one.
            datasets.FashionMNIST(config.root, train=train, download=True)
        images, labels = fashion_mnist_arrays(Path(config.root), train)
        dataset = ArrayImageDataset(images, labels, transform, keep_gray)
    else:
        size = config.synthetic_train_size if train else config.synthetic_test_size
        images, labels = synthetic_arrays(size, config.synthetic_classes, config.synthetic_image_size,
                                          seed=0 if train else 1)  # the same images in every stage
        dataset = ArrayImageDataset(images, labels, transform)
    if not train:
        return _subset(dataset, config.test_subset)
    return _split_validation(_subset(dataset, config.train_subset), split, config.validation_size)
