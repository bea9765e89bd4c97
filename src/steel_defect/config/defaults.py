"""Every configuration key, its default, type and meaning: the one place to look them up.

An experiment YAML is merged onto ``configs/base.yml`` and then onto these defaults;
a key that is not declared here is an error, so a typo never silently does nothing.
Sub-trees declared as ``Opt(dict, ...)`` (the ``params:`` of a named component) are
passed straight to a constructor, which rejects what it does not accept.

Print this table with ``steel-defect config --docs``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from steel_defect.constants import ENGINES


@dataclass(frozen=True)
class Opt:
    """One leaf key: default value, accepted type(s), a sentence of documentation."""

    default: Any
    type: type | tuple[type, ...]
    doc: str
    choices: tuple | None = None
    nullable: bool = False


_TRANSFORM_DOC = (
    "albumentations pipeline: a list of {name, params} (see steel_defect.data.transforms); train "
    "may start with CopyPaste, defects pasted from the fold's training frames (data/copy_paste.py)"
)

SCHEMA: dict[str, Any] = {
    "task": Opt(
        "seg",
        str,
        "what to train: 'cls' (5-class classifier) or 'seg' (4-mask segmenter)",
        choices=("cls", "seg"),
    ),
    "seed": Opt(42, int, "seed for folds, weights init, augmentation and data order"),
    "paths": {
        "data_dir": Opt("data/severstal", str, "Severstal-layout folder (train.csv, train_images/)"),
        "train_csv": Opt(
            None,
            str,
            "labels, wide or long layout; default <data_dir>/train.csv",
            nullable=True,
        ),
        "train_images": Opt(None, str, "training images; default <data_dir>/train_images", nullable=True),
        "test_images": Opt(None, str, "images to predict; default <data_dir>/test_images", nullable=True),
        "sample_submission": Opt(None, str, "row order for the submission; default none", nullable=True),
        "work_dir": Opt("work/default", str, "where a run writes folds, logs, checkpoints, resolved config"),
        "folds_csv": Opt(None, str, "fold split; default <work_dir>/folds.csv", nullable=True),
        "postprocessing": Opt(
            None,
            str,
            "per-class thresholds YAML from `steel-defect thresholds`; default "
            "<work_dir>/postprocessing.yml when it exists",
            nullable=True,
        ),
        "encoder_weights": Opt(
            None,
            str,
            "local file of pretrained encoder weights (offline clusters)",
            nullable=True,
        ),
    },
    "data": {
        "channels": Opt(3, int, "image channels fed to the model", choices=(1, 3)),
        "batch_size": Opt(8, int, "training batch size"),
        "valid_batch_size": Opt(None, int, "validation batch size; default batch_size", nullable=True),
        "num_workers": Opt(0, int, "DataLoader worker processes"),
        "normalize_on_device": Opt(
            False,
            bool,
            "batches leave the loader as uint8 and each side's last transform, a plain Normalize, "
            "runs on the training device (a quarter of the bytes, no float work on the loader's "
            "cores: bench/loader.py); the checkpoint's transforms.valid stay as written",
        ),
        "sampler": Opt(
            None,
            str,
            "training draw: null (each image once per epoch, shuffled), balanced (defect_fraction "
            "and class_weights in data.sampler_params; with data.extra it balances all images) or "
            "hard_negatives (every defect image plus the `keep` share of defect-free images ranked "
            "hardest by the `scores` CSV that `steel-defect thresholds` writes: <out>.oof.csv)",
            nullable=True,
        ),
        "sampler_params": Opt(
            {},
            dict,
            "balanced: defect_fraction (0.5), class_weights per class 1..4 ([1, 1, 1, 1]); "
            "hard_negatives: scores (a CSV with ImageId and cls_1..4 or peak_1..4), keep (0.5)",
        ),
        "extra": Opt(
            [],
            list,
            "extra labelled sets for training only, e.g. pseudo labels: a list of {train_csv, "
            "train_images, weight}; weight w draws round(w * n) of a set's n images per epoch "
            "(default 1.0: each once); images in the fold split are left out",
        ),
    },
    "folds": {
        "n_splits": Opt(5, int, "number of folds of the multilabel-stratified split"),
        "valid_fold": Opt(0, int, "fold used for validation; the others train"),
    },
    "transforms": {
        "train": Opt(
            [{"name": "HorizontalFlip", "params": {"p": 0.5}}, {"name": "Normalize"}], list, _TRANSFORM_DOC
        ),
        "valid": Opt([{"name": "Normalize"}], list, _TRANSFORM_DOC),
    },
    "model": {
        "name": Opt("unet", str, "architecture from the model registry (steel_defect.models)"),
        "encoder": Opt("resnet18", str, "backbone: an smp encoder name, or tu-<timm model>"),
        "encoder_weights": Opt(
            None, str, "null, 'imagenet', or use paths.encoder_weights for a file", nullable=True
        ),
        "classes": Opt(
            [1, 2, 3, 4],
            list,
            "seg: the classes this segmenter predicts, in order, e.g. [3] for a class-3 model; the "
            "predictor averages, per class, the models that predict it",
        ),
        "cls_head": Opt(
            None,
            dict,
            "seg: a classification head on the encoder's deepest features, trained jointly "
            "(loss = seg loss + weight * BCE of class presence): {weight: 0.5, dropout: 0.2, gate: "
            "hard | soft}; at inference it gates the masks (hard: the searched cls_threshold; soft: "
            "maps times head probability); null: none",
            nullable=True,
        ),
        "output_prior": Opt(
            0.01,
            float,
            "seg: initial output probability (head bias); null keeps the library's init",
            nullable=True,
        ),
        "params": Opt({}, dict, "extra constructor arguments of the architecture"),
    },
    "loss": {
        "name": Opt("bce_dice", str, "loss from the loss registry (steel_defect.losses)"),
        "params": Opt({}, dict, "loss constructor arguments"),
    },
    "optimizer": {
        "name": Opt("radam", str, "optimizer: radam, adam, adamw or sgd"),
        "lr": Opt(1e-3, float, "learning rate of the decoder / head"),
        "encoder_lr": Opt(None, float, "learning rate of the encoder; default lr", nullable=True),
        "params": Opt({}, dict, "further optimizer arguments (weight_decay, momentum, ...)"),
    },
    "scheduler": {
        "name": Opt(
            None,
            str,
            "plateau, cosine, cosine_restarts, noam, step or multistep; null for a constant rate",
            nullable=True,
        ),
        "params": Opt({}, dict, "scheduler constructor arguments"),
    },
    "train": {
        "epochs": Opt(10, int, "number of epochs"),
        "accumulation_steps": Opt(1, int, "batches per optimizer step"),
        "grad_clip": Opt(None, float, "max gradient norm; null for none", nullable=True),
        "mixup_alpha": Opt(0.0, float, "mixup Beta(alpha, alpha) on train batches; 0 disables"),
        "cutmix_alpha": Opt(0.0, float, "cutmix Beta(alpha, alpha) on train batches; 0 disables"),
        "amp": Opt(
            None,
            str,
            "mixed precision: fp16 (GPU only), bf16, auto (bf16 where the device computes it "
            "natively: a GPU that supports it, a CPU with AVX512-BF16 or AMX; else none) or null",
            choices=(None, "fp16", "bf16", "auto"),
            nullable=True,
        ),
        "engine": Opt("cpu", str, "cpu, gpu, dp or ddp", choices=ENGINES),
        "channels_last": Opt(
            True,
            bool,
            "train the model and its input in channels-last memory layout (NHWC): 1.24-1.53x "
            "the images/s of contiguous NCHW on the 2-core CPU (bench/train.py); false: NCHW",
        ),
        "early_stopping": Opt(None, int, "epochs without improvement before stopping", nullable=True),
        "save_top_k": Opt(1, int, "best checkpoints to keep"),
        "swa": Opt(
            None,
            int,
            "average the weights of the top-k checkpoints (k <= save_top_k) at the end, recompute "
            "BatchNorm statistics on the training data, save checkpoints/swa.pth; null: off",
            nullable=True,
        ),
        "snapshots": Opt(
            False,
            bool,
            "keep checkpoints/snapshot_K.pth at the end of every cosine_restarts cycle (a snapshot "
            "ensemble for the predictor)",
        ),
        "semi": Opt(
            None,
            dict,
            "seg: a semi-supervised term on unlabelled frames (training/semi.py): {name: "
            "mean_teacher, unlabelled: DIR, weight: 1.0, ema: 0.99, rampup_epochs: 2, batch_size: 4, "
            "noise: 0.1} or {name: fixmatch, unlabelled: DIR, weight: 1.0, ema: 0.0, threshold: 0.95, "
            "noise: 0.2, cutout: 0.5, rampup_epochs: 2, batch_size: 4}; frames of the fold split are "
            "left out of DIR; null: none",
            nullable=True,
        ),
        "max_train_batches": Opt(None, int, "cap batches per train epoch (quick runs)", nullable=True),
        "max_valid_batches": Opt(None, int, "cap batches per valid epoch (quick runs)", nullable=True),
        "threads": Opt(
            None,
            int,
            "torch CPU threads of the training process; null: torch's default (one per core)",
            nullable=True,
        ),
        "deterministic": Opt(
            False,
            bool,
            "repeat bit for bit across machines: fixed thread count (train.threads, 1 when null; "
            "a conv's weight gradient is summed in a per-thread order) and deterministic kernels. "
            "Without it a run repeats only on the same machine with the same thread count",
        ),
    },
    "inference": {
        "tta": Opt(["hflip"], list, "flip views averaged with the plain prediction: hflip, vflip, hvflip"),
        "batch_size": Opt(4, int, "images per forward pass"),
        "num_workers": Opt(0, int, "image-decoding threads that read ahead of the network"),
        "device": Opt(
            "auto", str, "auto (cuda when available), cpu or cuda", choices=("auto", "cpu", "cuda")
        ),
        "backend": Opt(
            "auto",
            str,
            "auto (on a CPU the faster of onnx and openvino, measured once per network and CPU and "
            "cached in the user's cache; else torch), torch, onnx (ONNX Runtime on the CPU: a .pth is "
            "exported once to <name>.onnx beside it, or to the user's cache when that folder is "
            "read-only, and again when it changes) or openvino (OpenVINO's CPU runtime on the same "
            "export, or on an .xml IR)",
            choices=("auto", "torch", "onnx", "openvino"),
        ),
        "precision": Opt(
            "fp32",
            str,
            "fp32 (models run as their files are), bf16 (openvino on a CPU with AMX or AVX-512 BF16; "
            "refused elsewhere), int8 (the X.int8.onnx / X.int8.xml that `steel-defect export --int8` "
            "wrote beside an export X.onnx) or auto (bf16 where openvino runs it natively, else fp32)",
            choices=("fp32", "bf16", "int8", "auto"),
        ),
        "threads": Opt(None, int, "CPU threads of the networks (default: the physical cores)", nullable=True),
        "search_downsample": Opt(
            1,
            int,
            "threshold search resolution: 1 scores every candidate at full resolution on the levels "
            "inference thresholds (a few numbers kept per image, no map); f > 1 keeps OOF maps f times "
            "smaller per side (faster, approximate: see search_full_res_check)",
        ),
        "search_checkpoint": Opt(
            "best",
            str,
            "the checkpoint of each fold that the threshold search tunes (and so inference runs): "
            "best, last, swa, snapshot_K or epoch_NNN",
        ),
        "search_full_res_check": Opt(
            True,
            bool,
            "with search_downsample > 1: after the search, predict the out-of-fold frames again as "
            "inference does and score the chosen parameters at full resolution "
            "(postprocessing.report.json); doubles the search's forward passes",
        ),
        "search_top_threshold": Opt(
            False,
            bool,
            "threshold search also tunes a per-class top-threshold gate: a mask is kept only if its "
            "maximum pixel probability reaches it (needs no classifier)",
        ),
        "search_slack": Opt(
            0.0,
            float,
            "threshold search: every setting within this many images' worth of out-of-fold Dice "
            "of a class's best is a candidate, and the one that paints the fewest images wins "
            "(fewer false defects on unseen frames); 0 keeps the best",
        ),
        "clean_gate": Opt(
            True,
            bool,
            "run the tuned pipeline's clean-frame gate where it has one: a coarse pass of the "
            "segmenters calls a frame clean (empty masks) and spares it the full pass (predict, "
            "watch; the pages and pseudo-labelling need every map and skip nothing); false (or "
            "--no-clean-gate): every frame runs the full pass",
        ),
        "gate_scale": Opt(
            2,
            int,
            "threshold search: tune a clean-frame gate on the segmenters' pass at 1/gate_scale of "
            "their input per side (2: about a quarter of the multiply-adds), out of fold; null: none",
            nullable=True,
        ),
        "gate_max_lost_pairs": Opt(
            1.0,
            float,
            "threshold search: the out-of-fold Dice, in (frame, class) pairs, the clean-frame gate may "
            "give up to skip more frames; 0: it skips only frames where the pipeline earns nothing",
        ),
    },
    # `steel-defect distill` (distill/): one student learns the tuned ensemble's maps
    "distill": {
        "model": Opt(
            {},
            dict,
            "the student's model: keys of the model section (name, encoder, encoder_weights, "
            "params, output_prior) over this config's; {} distils into the same architecture. "
            "It predicts all four classes and has no head: the teacher's maps are what it learns",
        ),
        "transforms": Opt(
            None,
            dict,
            "the student's {train: [...], valid: [...]} (e.g. another encoder's Normalize); null: "
            "this config's transforms, less CopyPaste (a pasted defect is not in the teacher's maps)",
            nullable=True,
        ),
        "epochs": Opt(None, int, "epochs of each student; null: train.epochs", nullable=True),
        "label_weight": Opt(
            0.5,
            float,
            "loss = (1 - w) * KL(teacher map || student map) over every frame + w * the config's loss "
            "against the labels over the labelled frames; 0: the teacher alone, 1: the labels alone",
        ),
        "unlabelled": Opt(
            None,
            str,
            "a folder of unlabelled frames the teacher maps too and the students learn from; frames "
            "named in the fold split are left out; null: the labelled frames only",
            nullable=True,
        ),
        "unlabelled_weight": Opt(
            1.0,
            float,
            "unlabelled frames drawn per epoch, per unlabelled frame (as data.extra's weight)",
        ),
        "cache_dir": Opt(
            None,
            str,
            "where the teacher's maps are kept (uint8 PNG per frame, keyed on the teacher's weights "
            "and the frame's bytes); null: <out_dir>/teacher_maps",
            nullable=True,
        ),
        "thresholds": Opt(
            "students",
            str,
            "the shipped student's thresholds: students (searched on the out-of-fold students' maps "
            "of their own folds) or teacher (the teacher's own out-of-fold thresholds, which the "
            "student's maps imitate); the other is written beside it, postprocessing.<name>.yml",
            choices=("students", "teacher"),
        ),
        "tta": Opt(
            [],
            list,
            "the student pipeline's flip views (hflip, vflip, hvflip); [] runs one pass a frame, "
            "which is what a line needs (it learnt the teacher's flip-averaged maps)",
        ),
    },
}
