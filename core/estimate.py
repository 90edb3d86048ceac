"""The label-free accuracy estimate, ATC (Average Thresholded Confidence; Garg et al., 2022, "Leveraging Unlabeled
Data to Predict Out-of-Distribution Performance"): a threshold set where the share of confidences above it equals
the accuracy on labelled rows; on unlabelled traffic, the share above it estimates accuracy. One rule for the refit
that sets a version's threshold (``flows/calibrate``) and the drift check that sets it again on live labels."""

from __future__ import annotations

import numpy as np

# Fewest labelled rows to set the threshold on: at 200 its quantile moves the estimate by about ±0.03 (binomial
# spread at accuracy 0.7).
ATC_MIN_ROWS = 200


def atc_threshold(confidence: np.ndarray, correct: np.ndarray) -> float:
    """The confidence above which as many rows lie as were answered right. Mean confidence stays high on topics a
    model never saw; the share above this threshold falls further with accuracy."""
    return float(np.quantile(np.asarray(confidence, dtype=np.float64), 1.0 - float(np.mean(correct))))
