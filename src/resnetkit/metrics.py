"""Classification metrics: top-k correct counts, confusion matrix, per-class accuracy.

Everything stays on the tensors' device and is vectorised (``topk`` and ``bincount``, no
per-sample Python). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _check_logits(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 2:
        raise ValueError(f"expected logits of shape (N, C), got {tuple(logits.shape)}")
    if targets.dim() != 1 or targets.shape[0] != logits.shape[0]:
        raise ValueError(
            f"expected targets of shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(targets.shape)}"
        )


def topk_correct(
    logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, int]:
    """How many rows have their target among the ``k`` highest logits, for each ``k`` in ``ks``.

    ``k`` is clipped to the number of classes (top-5 of a 3-class problem is top-3, i.e. every
    row counts). Keys of the result are the requested ``k`` values. Ties are broken by
    ``torch.topk``.
    """
    _check_logits(logits, targets)
    if not ks:
        return {}
    if any(k < 1 for k in ks):
        raise ValueError(f"every k must be >= 1, got {tuple(ks)}")
    num_classes = logits.shape[1]
    kmax = min(max(ks), num_classes)
    top = logits.topk(kmax, dim=1).indices  # (N, kmax), best first
    hits = top == targets.view(-1, 1)
    # cumulative: a row is a top-k hit if the target is within its first k predictions
    cum = hits.cumsum(dim=1).clamp_(max=1).sum(dim=0)  # (kmax,) hits within first j+1
    counts = cum.tolist()
    return {k: int(counts[min(k, num_classes) - 1]) for k in ks}


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``LongTensor[C, C]`` with ``cm[t, p]`` = number of samples of true class ``t`` predicted ``p``.

    Rows are true classes, columns predictions (the scikit-learn convention). Computed with one
    ``bincount`` over ``t * C + p``, on the inputs' device. Indices outside ``[0, C)`` raise
    ``ValueError`` (checked with one min/max read, which synchronises a GPU, as bincount does).
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if preds.shape != targets.shape or preds.dim() != 1:
        raise ValueError(
            f"expected preds and targets of the same shape (N,), got {tuple(preds.shape)} "
            f"and {tuple(targets.shape)}"
        )
    if preds.numel():
        lo_p, hi_p, lo_t, hi_t = torch.stack(
            [preds.min(), preds.max(), targets.min(), targets.max()]
        ).tolist()
        if min(lo_p, lo_t) < 0 or max(hi_p, hi_t) >= num_classes:
            raise ValueError(
                f"class indices must lie in [0, {num_classes - 1}], got preds in [{lo_p}, {hi_p}] "
                f"and targets in [{lo_t}, {hi_t}]"
            )
    idx = targets.long() * num_classes + preds.long()
    counts = torch.bincount(idx, minlength=num_classes * num_classes)
    return counts.view(num_classes, num_classes)


def per_class_accuracy(cm: torch.Tensor) -> torch.Tensor:
    """Recall of each class, ``diag / row sum``, as float64; NaN for a class with no samples."""
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {tuple(cm.shape)}")
    cm = cm.double()
    return cm.diagonal() / cm.sum(dim=1)  # 0/0 -> nan: undefined, not zero


class MetricAccumulator:
    """Running loss, top-1/top-5 hits, sample count and confusion matrix over many batches.

    ``update`` adds one batch, keeping the running sums on the batch's device; ``compute``
    returns the totals so far: the same numbers as one call over the concatenated batches.
    """

    def __init__(self, num_classes: int, topk: int = 5) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.topk = min(topk, num_classes)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen so far."""
        self._loss_sum: torch.Tensor | float = 0.0
        self._topk_hits: torch.Tensor | int = 0
        self._cm: torch.Tensor | None = None

    def update(
        self, logits: torch.Tensor, targets: torch.Tensor, loss_sum: torch.Tensor | float = 0.0
    ) -> None:
        """Add a batch: its logits ``(N, C)``, targets ``(N,)`` and the *sum* of its losses."""
        _check_logits(logits, targets)
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"expected logits with {self.num_classes} classes, got {logits.shape[1]}")
        logits = logits.detach()
        top = logits.topk(self.topk, dim=1).indices
        self._topk_hits = self._topk_hits + (top == targets.view(-1, 1)).any(dim=1).sum()
        if isinstance(loss_sum, torch.Tensor):
            loss_sum = loss_sum.detach().double()
        self._loss_sum = self._loss_sum + loss_sum
        cm = confusion_matrix(top[:, 0], targets, self.num_classes)
        self._cm = cm if self._cm is None else self._cm + cm

    def all_reduce(self, reduce: Callable[[torch.Tensor], torch.Tensor], device: torch.device) -> None:
        """Replace the running totals by their sum over processes; ``reduce`` all-reduces a flat tensor.

        A process that saw no batch contributes zeros (the eval loader shards without padding).
        """
        c = self.num_classes
        cm = self._cm if self._cm is not None else torch.zeros(c, c, dtype=torch.long, device=device)
        scalars = torch.stack([torch.as_tensor(self._loss_sum, dtype=torch.float64, device=cm.device),
                               torch.as_tensor(self._topk_hits, device=cm.device).double()])
        flat = reduce(torch.cat([scalars, cm.double().flatten()]))
        self._loss_sum = flat[0]
        self._topk_hits = flat[1].round().long()
        self._cm = flat[2:].round().long().view(c, c)

    @property
    def count(self) -> int:
        """Samples seen so far."""
        return 0 if self._cm is None else int(self._cm.sum())

    def compute(self) -> dict:
        """``loss`` (mean per sample), ``top1``, ``top5`` (fractions), ``per_class``, ``confusion``.

        ``top5`` is top-min(5, C). ``per_class`` and ``confusion`` are CPU tensors. With no
        samples seen the scalar metrics are NaN and the matrix is all zeros.
        """
        cm = (
            torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
            if self._cm is None
            else self._cm.cpu()
        )
        n = int(cm.sum())
        nan = float("nan")
        return {
            "loss": float(self._loss_sum) / n if n else nan,
            "top1": float(cm.diagonal().sum()) / n if n else nan,
            "top5": float(self._topk_hits) / n if n else nan,
            "count": n,
            "per_class": per_class_accuracy(cm),
            "confusion": cm,
        }


def precision_recall_f1(cm: torch.Tensor) -> dict[str, list[float]]:
    """Per-class ``precision``, ``recall``, ``f1`` and ``support`` from a confusion matrix.

    Rows are true classes, columns predictions. Precision is ``diag / column sum``, recall
    ``diag / row sum`` (the per-class accuracy), F1 their harmonic mean (0 when both are 0).
    Undefined values are NaN, not 0: precision of a class never predicted, recall and F1 of a
    class with no samples (scikit-learn would warn and print 0).
    """
    if cm.dim() != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"expected a square confusion matrix, got shape {tuple(cm.shape)}")
    cm = cm.double().cpu()
    tp = cm.diagonal()
    precision = tp / cm.sum(dim=0)  # 0/0 -> nan
    recall = tp / cm.sum(dim=1)
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom, torch.zeros_like(denom))
    f1 = torch.where(precision.isnan() | recall.isnan(), torch.full_like(f1, float("nan")), f1)
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": [int(s) for s in cm.sum(dim=1).tolist()]}


def most_confident_errors(logits: torch.Tensor, targets: torch.Tensor, n: int) -> list[dict]:
    """The ``n`` misclassified rows with the highest softmax probability on their (wrong) prediction.

    Returns ``{"index", "true", "pred", "prob"}`` dicts, most confident first; ties go to the
    lower index (a stable sort), so the choice is deterministic.
    """
    _check_logits(logits, targets)
    probs = torch.softmax(logits.float(), dim=1)
    conf, pred = probs.max(dim=1)
    wrong = (pred != targets).nonzero().squeeze(1)
    order = torch.sort(conf[wrong], descending=True, stable=True).indices[:max(0, n)]
    picked = wrong[order]
    return [{"index": int(i), "true": int(targets[i]), "pred": int(pred[i]), "prob": float(conf[i])}
            for i in picked.tolist()]
