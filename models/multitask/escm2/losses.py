"""The ESCM2 objective as pure functions of tensors (dygraph and static graph alike).

    L = L_CTR + counterfactual_w * L_CVR + global_w * L_CTCVR

L_CTR and L_CTCVR are means over all impressions D of the batch. L_CVR by mode:
  ESMM   none (the global risk alone)
  NAIVE  mean CVR error over the clicked impressions
  IPW    (1/|D|) sum_D o * delta / o_hat
  DR     R_err + R_imp with
         R_err = (1/|D|) sum_D [ e_hat + o * (delta - e_hat) / o_hat ]   (trains the CVR tower)
         R_imp = (1/|D|) sum_D o * (delta - e_hat)^2 / o_hat             (trains the imputation tower)
where delta is the CVR error BCE(pCVR, buy), e_hat the imputed error, and o_hat = max(pCTR,
propensity_floor) held constant, so the counterfactual risk never trains the CTR tower.
"""
import paddle

EPS = 1e-7


def bce(prob, label):
    """Elementwise binary cross-entropy of probabilities."""
    prob = paddle.clip(prob, EPS, 1.0 - EPS)
    return -(label * paddle.log(prob) + (1.0 - label) * paddle.log(1.0 - prob))


def cvr_risk(mode, pctr, pcvr, click, buy, propensity_floor, imputed_error=None):
    """L_CVR and its parts (a dict of scalar tensors; empty for ESMM)."""
    if mode == "ESMM":
        return {}
    error = bce(pcvr, buy)
    if mode == "NAIVE":
        return {"cvr_loss": paddle.sum(click * error) / paddle.clip(paddle.sum(click), min=1.0)}
    propensity = paddle.clip(pctr.detach(), min=propensity_floor)
    if mode == "IPW":
        return {"cvr_loss": paddle.mean(click * error / propensity)}
    if mode == "DR":
        e_hat = imputed_error.detach()
        r_err = paddle.mean(e_hat + click * (error - e_hat) / propensity)
        r_imp = paddle.mean(click * paddle.square(error.detach() - imputed_error) / propensity)
        return {"cvr_loss": r_err + r_imp, "r_err": r_err, "r_imp": r_imp}
    raise ValueError(f"unknown counterfact_mode {mode!r}")


def escm2_loss(outputs, click, buy, mode, counterfactual_w, global_w, propensity_floor):
    """`outputs` is the net's tuple; click and buy are float tensors [batch]. Returns a dict of
    scalar tensors with the total under "loss"."""
    pctr, pcvr, pctcvr = outputs[:3]
    terms = {"ctr_loss": paddle.mean(bce(pctr, click)), "ctcvr_loss": paddle.mean(bce(pctcvr, buy))}
    terms.update(cvr_risk(mode, pctr, pcvr, click, buy, propensity_floor,
                          outputs[3] if len(outputs) > 3 else None))
    loss = terms["ctr_loss"] + global_w * terms["ctcvr_loss"]
    if "cvr_loss" in terms:
        loss = loss + counterfactual_w * terms["cvr_loss"]
    return {"loss": loss, **terms}


def objective(outputs, click, buy, config):
    """escm2_loss with the weights and mode of a config."""
    hp = config.section("hyper_parameters")
    return escm2_loss(outputs, click, buy, config["runner.counterfact_mode"],
                      hp["counterfactual_w"], hp["global_w"], hp["propensity_floor"])
