"""The ESMM/ESCM2 evaluation protocol of an epoch's predictions (CTR and CTCVR over all impressions,
CVR over clicked ones), built from the runtime's exact metrics (rectools.metrics)."""
import numpy as np

from rectools.metrics import Columns, chunked_auc, cross_entropy_sum


def ctr_cvr_report(predictions):
    """The ESMM/ESCM2 protocol: CTR and CTCVR over all impressions, CVR over clicked ones.

    predictions: a Columns, or any mapping of name -> 1-D array [n], with `pctr` and `pcvr`
    (probabilities, float32 or float64, ranked as given) and `click` and `buy` (0/1, any integer
    dtype). pCTCVR = pCTR * pCVR in float64, so that its tiny values keep their order. One pass
    for the sums, then the AUCs (rectools.metrics.auc), in memory bounded whatever n.

    Returns {auc_ctr, auc_cvr, auc_ctcvr, logloss_*, calibration_* (summed predictions over summed
    labels), mean_pcvr: float (NaN where undefined), samples, clicks, conversions: int}."""
    columns = Columns.of(predictions)
    names = ("pctr", "pcvr", "click", "buy")
    s = dict.fromkeys(["ll_ctr", "ll_cvr", "ll_ctcvr", "pctr", "pcvr_clicked", "pctcvr", "pcvr",
                       "clicks", "conversions", "clicked_conversions"], 0.0)
    for pctr, pcvr, click, buy in columns.chunks(*names):
        clicked = click == 1
        pctcvr = pctr.astype(np.float64) * pcvr
        s["ll_ctr"] += cross_entropy_sum(click, pctr)
        s["ll_cvr"] += cross_entropy_sum(buy[clicked], pcvr[clicked])
        s["ll_ctcvr"] += cross_entropy_sum(buy, pctcvr)
        s["pctr"] += float(pctr.sum(dtype=np.float64))
        s["pcvr_clicked"] += float(pcvr[clicked].sum(dtype=np.float64))
        s["pctcvr"] += float(pctcvr.sum())
        s["pcvr"] += float(pcvr.sum(dtype=np.float64))
        s["clicks"] += int(np.count_nonzero(clicked))
        s["conversions"] += int(np.count_nonzero(buy == 1))
        s["clicked_conversions"] += int(np.count_nonzero(buy[clicked] == 1))
    n, clicks, conversions = columns.rows, int(s["clicks"]), int(s["conversions"])
    cvr_conversions = int(s["clicked_conversions"])

    def ratio(total, count):  # calibration too: summed predictions over summed labels, >1 over-estimates
        return total / count if count else float("nan")

    return {
        "auc_ctr": chunked_auc(lambda: columns.chunks("click", "pctr"), clicks, n - clicks),
        "auc_cvr": chunked_auc(lambda: ((b[c == 1], v[c == 1]) for c, b, v in columns.chunks("click", "buy", "pcvr")),
                        cvr_conversions, clicks - cvr_conversions),
        "auc_ctcvr": chunked_auc(lambda: ((b, p.astype(np.float64) * v) for b, p, v in columns.chunks("buy", "pctr", "pcvr")),
                          conversions, n - conversions),
        "logloss_ctr": ratio(s["ll_ctr"], n),
        "logloss_cvr": ratio(s["ll_cvr"], clicks),
        "logloss_ctcvr": ratio(s["ll_ctcvr"], n),
        "calibration_ctr": ratio(s["pctr"], clicks),
        "calibration_cvr": ratio(s["pcvr_clicked"], cvr_conversions),
        "calibration_ctcvr": ratio(s["pctcvr"], conversions),
        "mean_pcvr": ratio(s["pcvr"], n),
        "samples": n,
        "clicks": clicks,
        "conversions": conversions,
    }
