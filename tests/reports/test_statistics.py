"""Intervals, paired differences and claim verdicts, by hand-checked numbers."""
from __future__ import annotations

import pytest

from plans.tables import RANDOM_INIT, Claim, Plan, Row
from reports.__main__ import write_reports
from reports.tables import RowResult, claims_table, pretraining_gain_table
from reports.statistics import HOLDS, NOT_RESOLVED, REVERSED, mean_interval, paired_difference, verdict

from test_reports import write_result


def test_t_interval_of_a_mean():
    interval = mean_interval([1.0, 2.0, 3.0])  # mean 2, sample std 1, t(2) = 4.303
    assert interval.mean == 2.0 and interval.half_width == pytest.approx(4.303 / 3 ** 0.5) and interval.n == 3
    assert mean_interval([5.0]) is None


def test_pairing_removes_the_seed_effect_that_the_means_keep():
    # The seeds move both rows together (70, 60, 80): unpaired intervals overlap widely, the paired
    # difference (+1 on every seed) is resolved.
    better, worse = {0: 71.0, 1: 61.0, 2: 81.0}, {0: 70.0, 1: 60.0, 2: 80.0}
    assert mean_interval(list(better.values())).low < mean_interval(list(worse.values())).high
    mean, interval, pairs = paired_difference(better, worse)
    assert (mean, interval.half_width, pairs) == (1.0, 0.0, 3)
    assert verdict(interval) == HOLDS
    assert verdict(paired_difference(worse, better)[1]) == REVERSED
    assert verdict(paired_difference({0: 1.0, 1: 3.0}, {0: 2.0, 1: 2.0})[1]) == NOT_RESOLVED  # -1, +1
    assert paired_difference({0: 1.0}, {1: 2.0}) == (None, None, 0)  # no common seed


def test_report_with_three_seeds_gives_intervals_and_claim_verdicts(tmp_path):
    values = {"m1": (60.0, 50.0, 70.0), "m2": (62.0, 52.5, 71.5), "m3": (59.0, 49.5, 68.5), "m4": (60.0, 51.0, 69.0)}
    for row, knns in values.items():
        for seed, knn in enumerate(knns):
            base = f"table6/cifar100/{row}/seed{seed}"
            write_result(tmp_path / "runs", f"{base}/knn", "knn", {"top1_k20": knn}, seed)
    (report,) = write_reports(["table6"], tmp_path / "runs", tmp_path / "out", seeds=(0, 1, 2), datasets=("cifar100",))
    text = report.read_text()
    # m=2 - m=1 = (2, 2.5, 1.5): mean 2.0, std 0.5, half width 4.303 * 0.5 / sqrt(3) = 1.242
    assert "| m = 2 beats m = 1 (MoCo v3) | cifar100 | ViT-S/2 | knn | +2.0 [0.8, 3.2] (n=3) | holds |" in text
    # m=3 - m=1 = (-1, -0.5, -1.5): mean -1.0, interval [-2.2, 0.2] contains 0
    assert "| m = 3 beats m = 1 (MoCo v3) | cifar100 | ViT-S/2 | knn | -1.0 [-2.2, 0.2] (n=3) | not resolved |" in text
    # m=3 - m=2 = (-3, -3, -3): reversed, zero width
    assert "| m = 3 beats m = 2 | cifar100 | ViT-S/2 | knn | -3.0 [-3.0, -3.0] (n=3) | reversed |" in text
    assert "| m = 3 beats m = 4 | cifar100 | ViT-S/2 | knn | -1.0 [-2.2, 0.2] (n=3) | not resolved |" in text
    m1 = next(line for line in text.splitlines() if line.startswith("| PatchMix m=1") and "knn" in line)
    assert "| 60.0 ± 10.0 |" in m1 and "| [35.2, 84.8] | — |" in m1  # 60 +- 4.303 * 10 / sqrt(3)


# Table 3 at the Fashion-MNIST scale, three seeds: kNN of every row and of the random initialisation,
# linear of every pretrained row. DINO ends below its random initialisation on kNN (paired -7, -6, -6);
# SDMP's kNN gain straddles 0 (+3, -1, +1: mean +1.0, interval [-4.0, 6.0]); PatchMix and MoCo v3 learn.
TABLE3_KNN = {"random-init": (57.0, 58.0, 59.0), "patchmix": (68.0, 69.0, 70.0), "mocov3": (67.0, 68.0, 69.0),
              "dino": (50.0, 52.0, 53.0), "sdmp": (60.0, 57.0, 60.0)}
TABLE3_LINEAR = {"patchmix": (67.0, 68.0, 69.0), "mocov3": (66.0, 67.0, 68.0), "dino": (56.0, 56.5, 57.0),
                 "sdmp": (68.0, 69.0, 70.0)}


COMPARED = ("patchmix", "mocov3", "dino", "sdmp")


def write_knn(root, table: str, knn: dict[str, tuple[float, ...]], initial: dict[str, tuple[float, ...]]) -> None:
    """kNN of each method's runs (`knn`, keyed by method) and of the weights each method's runs start from
    (`initial`: its own values, else `knn["random-init"]`, else none), as the plans name their stages."""
    for row in COMPARED:
        for suffix, values in (("", knn.get(row, ())), ("-random-init", initial.get(row, knn.get("random-init", ())))):
            for seed, value in enumerate(values):
                write_result(root, f"{table}/fashion_mnist/{row}{suffix}/seed{seed}/knn", "knn", {"top1_k20": value}, seed)


def table3_report(root, out, with_random_init: bool = True, initial: dict[str, tuple[float, ...]] = {}) -> str:
    write_knn(root, "table3", TABLE3_KNN if with_random_init else {k: v for k, v in TABLE3_KNN.items()
                                                                   if k != "random-init"}, initial)
    for row, values in TABLE3_LINEAR.items():
        for seed, value in enumerate(values):
            write_result(root, f"table3/fashion_mnist/{row}/seed{seed}/linear", "linear", {"top1_best": value}, seed)
    (report,) = write_reports(["table3"], root, out, seeds=(0, 1, 2), datasets=("fashion_mnist",))
    return report.read_text()


def claim_verdict(text: str, claim: str, protocol: str) -> str:
    (line,) = [line for line in text.splitlines() if line.startswith(f"| {claim} |") and f"| {protocol} |" in line]
    return line.strip("|").split("|")[-1].strip()


def test_a_claim_with_a_method_that_did_not_learn_is_not_comparable(tmp_path):
    text = table3_report(tmp_path / "runs", tmp_path / "out")
    # Below its random initialisation, and straddling it: neither learned on kNN.
    assert claim_verdict(text, "PatchMix beats DINO", "knn") == "not comparable (DINO did not learn here)"
    assert claim_verdict(text, "PatchMix beats SDMP", "knn") == "not comparable (SDMP did not learn here)"
    # The other claims keep their verdicts: MoCo v3 learned; on linear there is no random-initialisation
    # row, so whether a method learned is not judged there (per protocol).
    assert claim_verdict(text, "PatchMix beats MoCo v3 (m=1)", "knn") == "holds"  # +1 on every seed
    assert claim_verdict(text, "PatchMix beats MoCo v3 (m=1)", "linear") == "holds"
    assert claim_verdict(text, "PatchMix beats DINO", "linear") == "holds"  # +11, +11.5, +12
    assert claim_verdict(text, "PatchMix beats SDMP", "linear") == "reversed"  # -1 on every seed

    gains = text.split("## What pretraining added", 1)[1]
    learned = {line.split("|")[1].strip(): line.strip("|").split("|")[-1].strip()
               for line in gains.splitlines() if line.startswith("| ") and "| knn |" in line}
    assert learned == {"PatchMix": "yes", "MoCo v3 (m=1)": "yes", "DINO": "did not learn at this scale",
                       "SDMP": "did not learn at this scale"}
    # Its own column says whether a row learned: no star of the main table's notes here.
    assert "*" not in "".join(line for line in gains.splitlines() if line.startswith("| "))
    dino = next(line for line in text.splitlines() if line.startswith("| DINO |") and "| knn" in line)
    assert "51.7 ± 1.5 *" in dino  # marked in the main table, with its note
    assert "- DINO fashion_mnist knn: did not learn at this scale: pretrained − random init -6.3 [-7.8, -4.9] " \
           "(n=3) does not lie above 0" in text


def test_without_a_random_initialisation_row_the_verdicts_are_unchanged(tmp_path):
    text = table3_report(tmp_path / "runs", tmp_path / "out", with_random_init=False)
    assert claim_verdict(text, "PatchMix beats DINO", "knn") == "holds"  # +18, +17, +17
    assert claim_verdict(text, "PatchMix beats SDMP", "knn") == "holds"  # +8, +12, +10
    assert "did not learn" not in text and "What pretraining added" not in text


def _result(method: str, protocol: str, values: tuple[float, ...]) -> RowResult:
    row = Row("table3", method, "ViT-debug/4", 0 if method == RANDOM_INIT else 20, "fashion_mnist", protocol)
    mean = sum(values) / len(values)
    return RowResult(row, None, mean, 0.0, list(range(len(values))), "p", "h", "c", values=dict(enumerate(values)))


def test_learning_is_judged_per_protocol_and_on_either_side_of_a_claim():
    """DINO learned on linear (above the random initialisation's linear probe) but not on kNN: only its
    kNN claim is not comparable. A claim whose better side did not learn names that side; both sides,
    both."""
    plan = Plan("table3", "t", claims=(Claim("PatchMix beats DINO", "PatchMix", "DINO"),
                                       Claim("DINO beats SDMP", "DINO", "SDMP")))
    results = [_result(RANDOM_INIT, "knn", (57.0, 58.0, 59.0)), _result(RANDOM_INIT, "linear", (40.0, 41.0, 42.0)),
               _result("PatchMix", "knn", (68.0, 69.0, 70.0)), _result("PatchMix", "linear", (67.0, 68.0, 69.0)),
               _result("DINO", "knn", (50.0, 52.0, 53.0)), _result("DINO", "linear", (56.0, 56.5, 57.0)),
               _result("SDMP", "knn", (56.0, 58.0, 58.0)), _result("SDMP", "linear", (45.0, 46.0, 47.0))]
    text = claims_table(plan, results)
    assert claim_verdict(text, "PatchMix beats DINO", "knn") == "not comparable (DINO did not learn here)"
    assert claim_verdict(text, "PatchMix beats DINO", "linear") == "holds"
    assert claim_verdict(text, "DINO beats SDMP", "knn") == "not comparable (DINO and SDMP did not learn here)"
    assert claim_verdict(text, "DINO beats SDMP", "linear") == "holds"  # +11, +10.5, +10: both learned on linear
    sdmp = _result("SDMP", "knn", (60.0, 61.0, 62.0))  # learned on kNN: only DINO is named
    assert claim_verdict(claims_table(plan, [*results[:6], sdmp]), "DINO beats SDMP", "knn") == \
        "not comparable (DINO did not learn here)"


def test_one_seed_gives_no_interval_and_judges_no_learning():
    """With one seed there is no interval of the gain: whether a method learned is not judged, and
    its claims keep the one-seed verdict."""
    plan = Plan("demo", "t", claims=(Claim("PatchMix beats DINO", "PatchMix", "DINO"),))
    results = [_result(RANDOM_INIT, "knn", (57.0,)), _result("PatchMix", "knn", (68.0,)),
               _result("DINO", "knn", (50.0,))]
    assert claim_verdict(claims_table(plan, results), "PatchMix beats DINO", "knn") == "not resolved (one seed)"
    assert pretraining_gain_table(results).splitlines()[3].endswith(
        "| -7.0 (n=1) | not judged (under two seeds) |")


# Figure 4 at the Fashion-MNIST scale, three seeds: each method's similarity, the kNN of the same runs
# and the kNN of the random initialisation. DINO's kNN ends below the initialisation, SDMP's straddles
# it, while DINO's similarity is the lowest (a claim against it would "hold" if it were compared).
FIG4_SIMILARITY = {"patchmix": (0.90, 0.92, 0.94), "mocov3": (0.83, 0.84, 0.85), "dino": (0.55, 0.60, 0.67),
                   "sdmp": (0.81, 0.82, 0.83)}


def fig4_report(root, out, knn: dict[str, tuple[float, ...]]) -> str:
    for row, values in FIG4_SIMILARITY.items():
        for seed, value in enumerate(values):
            write_result(root, f"fig4/fashion_mnist/{row}/seed{seed}/similarity", "similarity",
                         {"related_class_similarity": value}, seed)
    write_knn(root, "fig4", knn, {})
    (report,) = write_reports(["fig4"], root, out, seeds=(0, 1, 2), datasets=("fashion_mnist",))
    return report.read_text()


def test_a_similarity_claim_with_a_method_that_did_not_learn_on_knn_is_not_comparable(tmp_path):
    """A similarity does not grow with learning (a collapsed encoder's is 1): whether each side learned
    is judged on the kNN of the same runs, and only the similarity claims are reported."""
    text = fig4_report(tmp_path / "runs", tmp_path / "out", TABLE3_KNN)
    claim = "PatchMix gives related classes more similarity than {}"
    assert claim_verdict(text, claim.format("DINO"), "similarity") == "not comparable (DINO did not learn here)"
    assert claim_verdict(text, claim.format("SDMP"), "similarity") == "not comparable (SDMP did not learn here)"
    assert claim_verdict(text, claim.format("MoCo v3 (m=1)"), "similarity") == "holds"
    claims = text.split("## The paper's claims at this scale", 1)[1].split("##", 1)[0]
    assert "| knn |" not in claims and "judged on the knn of the same runs" in claims
    assert "- DINO fashion_mnist similarity: did not learn at this scale: pretrained − random init on knn " \
           "(the same runs) -6.3 [-7.8, -4.9] (n=3) does not lie above 0" in text
    dino = next(line for line in text.splitlines() if line.startswith("| DINO |") and "| similarity" in line)
    assert "0.607 ± 0.060 *" in dino


def test_a_similarity_claim_stands_when_both_sides_learned_or_learning_cannot_be_judged(tmp_path):
    learned_knn = {**TABLE3_KNN, "dino": (66.0, 67.0, 68.0), "sdmp": (66.0, 66.0, 69.0)}
    text = fig4_report(tmp_path / "runs", tmp_path / "out", learned_knn)
    claim = "PatchMix gives related classes more similarity than {}"
    assert claim_verdict(text, claim.format("DINO"), "similarity") == "holds"
    assert claim_verdict(text, claim.format("SDMP"), "similarity") == "holds"
    assert all(phrase not in text for phrase in ("did not learn here", "did not learn at this scale:",
                                                 "did not learn at this scale |"))
    # No kNN of the runs (a similarity-only result set): not judged, the verdicts stand.
    unjudged = fig4_report(tmp_path / "runs2", tmp_path / "out2", {})
    assert claim_verdict(unjudged, claim.format("DINO"), "similarity") == "holds"
    assert "did not learn" not in unjudged and "same runs" not in unjudged


def test_fig4s_plot_draws_each_methods_similarity_and_no_knn_stage(tmp_path, monkeypatch):
    """The figure's colours and legend are the similarity stages' (four methods), whatever other stages
    (the kNN that judges learning) the plan reports."""
    import reports.__main__ as main
    drawn = []
    monkeypatch.setattr(main, "plot_similarity", lambda results, labels, path: drawn.append(labels) or None)
    fig4_report(tmp_path / "runs", tmp_path / "out", TABLE3_KNN)
    (labels,) = drawn
    assert sorted(labels.values()) == ["DINO", "MoCo v3 (m=1)", "PatchMix", "SDMP"]
    assert all(key.endswith("/seed0/similarity") for key in labels)


def test_each_method_is_judged_against_the_weights_its_own_runs_start_from(tmp_path):
    """DINO initialises its ViT otherwise than MoCo v3: its own initialisation (45, 46, 47) lies below the
    others' (57, 58, 59). Against its own, DINO's kNN (50, 52, 53) gained 5 to 6 points: it learned, and
    "PatchMix beats DINO" is compared; against another method's initialisation it would not have been."""
    text = table3_report(tmp_path / "runs", tmp_path / "out", initial={"dino": (45.0, 46.0, 47.0)})
    assert claim_verdict(text, "PatchMix beats DINO", "knn") == "holds"  # +18, +17, +17
    gains = text.split("## What pretraining added", 1)[1]
    dino = next(line for line in gains.splitlines() if line.startswith("| DINO |") and "| knn |" in line)
    assert "| 46.0 ± 1.0 | +5.7 [4.2, 7.1] (n=3) | yes |" in dino
    assert "| DINO: random init (no pretraining) | ViT-debug/4 | — | fashion_mnist | knn (top-1, k=20) | — | 46.0 ± 1.0 |" in text
    # The methods' own rows stand for themselves: MoCo v3 is paired with MoCo v3's initialisation.
    mocov3 = next(line for line in gains.splitlines() if line.startswith("| MoCo v3 (m=1) |") and "| knn |" in line)
    assert "| 58.0 ± 1.0 | +10.0 [10.0, 10.0] (n=3) | yes |" in mocov3


def test_table6_at_fashion_mnist_plots_the_mix_numbers_beside_its_random_initialisation_row(tmp_path):
    """Its plot is against m, read from the row names: the random-initialisation row has no m."""
    for seed in (0, 1):
        for row, knn in (("m1", 67.0), ("m2", 68.0), ("m3", 67.5), ("m4", 68.5), ("m1-random-init", 57.0)):
            write_result(tmp_path / "runs", f"table6/fashion_mnist/{row}/seed{seed}/knn", "knn",
                         {"top1_k20": knn + seed}, seed)
    (report,) = write_reports(["table6"], tmp_path / "runs", tmp_path / "out", seeds=(0, 1), datasets=("fashion_mnist",))
    assert "![table6_mix_number.png](table6_mix_number.png)" in report.read_text()
    assert (tmp_path / "out" / "table6_mix_number.png").stat().st_size > 0
    assert "| PatchMix m=1 | fashion_mnist | ViT-debug/4 | knn | 67.5 ± 0.7 | 57.5 ± 0.7 |" in report.read_text()


def test_table3s_bar_labels_do_not_overlap_with_a_random_initialisation_row_per_method(tmp_path, monkeypatch):
    """Table 3's plot has eight groups, four named "<method>: random init (no pretraining)": written on
    one line, each label ran into its neighbours'."""
    from plans.tables import random_init_label
    from reports import plots
    saved = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda figure, path: saved.append(figure) or save(figure, path))
    methods = [name for method in ("PatchMix", "MoCo v3 (m=1)", "DINO", "SDMP")
               for name in (method, random_init_label(method))]
    rows = [_result(method, protocol, (60.0, 61.0)) for method in methods for protocol in ("linear", "knn")]
    plots.plot_bars(rows, "table3: ours", tmp_path / "table3.png")
    (figure,) = saved
    figure.canvas.draw()
    boxes = [label.get_window_extent() for label in figure.axes[0].get_xticklabels()]
    assert len(boxes) == 8
    assert not [index for index, (left, right) in enumerate(zip(boxes, boxes[1:])) if left.x1 > right.x0]
