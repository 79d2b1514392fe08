"""The balance check of a propensity: does 1/pCTR weighting make the clicked impressions stand for all?

Under a correct propensity ô(x) = P(click | x), for any function g of the features,
E[o g(x) / ô(x)] = E[g(x)] (Imai & Ratkovic 2014, covariate balancing; Li et al., "Propensity
Matters: Measuring and Enhancing Balancing for Recommendation", ICML 2023). With g the indicator of
a decile of a score (pCVR, pCTR), the inverse-propensity-weighted click count per impression of
each decile,

    balance_b = (sum over clicked impressions i in b of 1 / ô_i) / (impressions in b),

is ~1 in every decile. A decile far from 1 says the propensity misses part of the selection there:
where it is > 1 the clicks are over-weighted (their CTR was under-estimated), where < 1 under-weighted.
ESCM2's IPW and DR risks then re-weight the wrong way, and can add bias rather than remove it. The
check needs no ground truth: it runs on any evaluation data with clicks.

A decile fails when |balance_b - 1| exceeds the tolerance *and* four standard errors of balance_b
under a correct propensity, sqrt(sum_{i in b} (1 - ô_i) / ô_i) / n_b (o_i ~ Bernoulli(ô_i), so
Var(o_i / ô_i) = (1 - ô_i) / ô_i), so that a small evaluation set does not fail a correct propensity
by chance (four, not three: twenty deciles are tested, and the weights are skewed).
Companions: the effective sample size of the weights over the clicks, (sum w)^2 / sum w^2 / clicks
(1 = equal weights), and the largest weight's share of their sum.
"""
import numpy as np

from rectools.metrics import Columns

BINS = 10
Z_FAIL = 4.0  # standard errors a decile must be off by to fail
QUANTILE_SAMPLE = 1_000_000  # scores read to place the decile edges (a strided sample beyond it)


def decile_edges(columns, name, bins=BINS):
    """Inner edges [bins - 1] of `name`'s quantiles over a Columns, from at most QUANTILE_SAMPLE
    values taken evenly across it (memory bounded whatever its length)."""
    step = max(1, -(-columns.rows // QUANTILE_SAMPLE))
    sample, offset = [], 0
    for (values,) in columns.chunks(name):
        sample.append(values[(-offset) % step::step])
        offset += len(values)
    values = np.concatenate(sample).astype(np.float64) if sample else np.zeros(0)
    if not values.size:
        return np.zeros(bins - 1)
    return np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])


def balance_report(predictions, propensity_floor, tolerance, bins=BINS, propensity_power=1.0):
    """The balance check of the propensity, per decile of pCVR and of the propensity.

    predictions: a Columns or a mapping of 1-D arrays [n] with `pctr`, `pcvr` (float) and `click`
    (0/1), and `propensity` (float) where the CVR risks were given one (a training epoch of
    runner.propensity_file), which then stands for pCTR throughout (balance_pctr is by its deciles).
    The propensity is max(pCTR, propensity_floor), as the CVR risks use it (losses.py).
    Returns a dict: balance_pcvr and balance_pctr, lists [bins] of balance_b (NaN for an empty
    decile); balance_worst, the largest |balance_b - 1| among failing deciles of either score
    (0.0 when none fails); balance_failed, the number of failing deciles; ipw_ess_share and
    ipw_max_weight_share of the weights the CVR risks apply, 1 / propensity^propensity_power
    (NaN without clicks). Deciles are of the scores' values; ties at an edge go to the upper decile.
    """
    columns = Columns.of(predictions)
    given = "propensity" if "propensity" in columns else "pctr"
    edges = {"pcvr": decile_edges(columns, "pcvr", bins), "pctr": decile_edges(columns, given, bins)}
    sums = {name: np.zeros((3, bins)) for name in edges}  # per decile: impressions, sum w, sum var(w)
    total_w = total_w2 = max_w = 0.0
    clicks = 0
    for score, pcvr, click in columns.chunks(given, "pcvr", "click"):
        propensity = np.maximum(score.astype(np.float64), propensity_floor)
        clicked = click == 1
        weight = np.where(clicked, 1.0 / propensity, 0.0)
        variance = (1.0 - propensity) / propensity  # of o / ô under a correct ô
        for name, ranked in (("pcvr", pcvr), ("pctr", score)):
            decile = np.searchsorted(edges[name], ranked, side="right")
            for row, values in enumerate((None, weight, variance)):
                sums[name][row] += np.bincount(decile, weights=values, minlength=bins)
        applied = weight if propensity_power == 1.0 else np.where(clicked, propensity ** -propensity_power, 0.0)
        total_w += float(applied.sum())
        total_w2 += float(np.square(applied).sum())
        max_w = max(max_w, float(applied.max(initial=0.0)))
        clicks += int(np.count_nonzero(clicked))
    report, worst, failed = {}, 0.0, 0
    for name, (count, weighted, variance) in sums.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = weighted / count
            error = np.sqrt(variance) / count
        deviation = np.abs(ratio - 1.0)
        failing = (deviation > tolerance) & (deviation > Z_FAIL * error)
        failed += int(failing.sum())
        worst = max([worst, *deviation[failing].tolist()])
        report[f"balance_{name}"] = [round(float(r), 4) for r in ratio]
    report["balance_worst"] = worst
    report["balance_failed"] = failed
    report["ipw_ess_share"] = total_w ** 2 / total_w2 / clicks if clicks else float("nan")
    report["ipw_max_weight_share"] = max_w / total_w if clicks else float("nan")
    return report


def balance_warning(report, tolerance):
    """The one warning line of a failed balance check (a report of balance_report), or None."""
    if not report.get("balance_failed"):
        return None
    ranges = ", ".join(f"{name} {np.nanmin(report[f'balance_{name}']):.2f}-{np.nanmax(report[f'balance_{name}']):.2f}"
                       for name in ("pcvr", "pctr"))
    return (f"balance check failed: in {report['balance_failed']} decile(s) the 1/pCTR-weighted clicks per "
            f"impression are off 1 by up to {report['balance_worst']:.2f} (tolerance {tolerance:g}; by decile of "
            f"{ranges}): the propensity misses part of the selection; ESCM2's correction may add bias here "
            "(compare with counterfact_mode ESMM)")
