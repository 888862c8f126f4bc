"""Batch inference with DeiT: top-k classes and pre-logits embeddings of image files, folders or tensors.

    import fastdeit
    predictor = fastdeit.Predictor("deit_small_patch16_224", checkpoint="deit_small_patch16_224.pth")
    preds = predictor.predict("photos/", topk=5)         # a folder (recursive), file paths, or a (B, 3, H, W) tensor
    for p in preds:
        print(p.source, p.labels[0], p.probs[0])
    print(preds.report.summary())                         # images/s, and where the time went
    emb = predictor.embed(["a.jpg", "b.png"])             # emb.features (2, 384) float32, emb.sources, emb.report

Files are decoded by DALI (nvJPEG on the GPU when the model is on one, else its CPU decoder) with DeiT's eval
transform (shorter side resized to img_size / crop_pct, bicubic; center crop; ImageNet normalization), a few
batches ahead of the model (fastdeit.data.build_predict_loader); PIL is the fallback where DALI cannot be imported.
Unreadable, truncated and non-image files, and images in formats the decoders do not read (GIF, HEIC, SVG, ...), are
skipped, named in a DataWarning and listed in the report. Tensors are taken as preprocessed float images, or as uint8
pixels that are normalised here (see inputs.py).

On a CUDA GPU the model runs the throughput path:
- bf16 weights and activations (`dtype="auto"`; fp32 on the CPU, where bf16 is slower and only emulated), softmax
  and outputs in fp32;
- channels-last input to the patch-embedding convolution (its output then flattens to tokens without a copy);
- the largest batch that fits (`batch_size="auto"`): the largest power of two up to 1024 that runs without running
  out of memory (fastdeit.batch_size), probed once and cached in predict_batch_sizes.json in fastdeit's cache
  folder (`fastdeit._env.cache_dir()`: $FASTDEIT_CACHE_DIR, else ~/.cache/fastdeit) per model, dtype, backend and
  GPU;
- CUDA graphs (`cuda_graphs=True`, fastdeit.cuda_graphs) of the forward: one per batch shape (and logits or
  features), captured on first use before decoding starts; the last, shorter batch is padded to the captured size
  and its pad rows dropped;
- pinned-memory, non-blocking copies for batches decoded on the CPU (PIL) and for the results, with at most two
  batches in flight, so the CPU prepares the next batch while the GPU runs this one.

Modules: predictor.py (the Predictor and its loop), inputs.py (file discovery, tensor input), labels.py (class
names), results.py (Predictions, Embeddings, RunReport).
"""

from fastdeit.inference.inputs import ImageFiles, collect_images
from fastdeit.inference.labels import imagenet_labels, read_labels
from fastdeit.inference.predictor import Predictor
from fastdeit.inference.results import Embeddings, Prediction, Predictions, RunReport

__all__ = [
    "Embeddings",
    "ImageFiles",
    "Prediction",
    "Predictions",
    "Predictor",
    "RunReport",
    "collect_images",
    "imagenet_labels",
    "read_labels",
]
