import math
import random

import pytest

from vretrver.metrics import (
    MBEIR_TASKS,
    PAPER_RESULTS,
    average_precision_at_k,
    benchmark_average,
    expand_copies,
    paper_metric,
    recall_at_k,
    score_task,
    task_metrics,
)


def test_recall_is_a_hit_rate_over_several_positives():
    ranked = ["n1", "p1", "p2", "n2"]
    positives = {"p1", "p2", "p3"}
    assert recall_at_k(ranked, positives, 1) == 0.0
    # one of three positives in the top 2 is a full hit (UniIR), not 1/3
    assert recall_at_k(ranked, positives, 2) == 1.0
    assert recall_at_k(ranked, positives, 10) == 1.0
    assert recall_at_k([], positives, 5) == 0.0


def test_recall_refuses_a_query_without_positives():
    with pytest.raises(ValueError, match="without positives"):
        recall_at_k(["a"], [], 5)
    with pytest.raises(ValueError, match="without positives"):
        average_precision_at_k(["a"], set(), 5)


def test_average_precision_circo_definition():
    ranked = ["p1", "n1", "p2", "n2", "p3"]
    positives = {"p1", "p2", "p3", "p4"}
    # P@1 = 1, P@3 = 2/3, P@5 = 3/5; denominator min(4 positives, k=5) = 4
    assert average_precision_at_k(ranked, positives, 5) == pytest.approx((1 + 2 / 3 + 3 / 5) / 4)
    # k = 2: one hit at rank 1, denominator min(4, 2) = 2
    assert average_precision_at_k(ranked, positives, 2) == pytest.approx(0.5)
    # a single positive at rank 3
    assert average_precision_at_k(["a", "b", "p"], {"p"}, 5) == pytest.approx(1 / 3)
    assert average_precision_at_k(["p1", "p2"], {"p1", "p2"}, 5) == pytest.approx(1.0)


def test_repeated_ids_earn_no_extra_credit():
    assert average_precision_at_k(["p", "p", "q"], {"p", "q"}, 3) == pytest.approx((1 + 2 / 3) / 2)
    assert recall_at_k(["n", "n", "p"], {"p"}, 2) == 0.0


def test_task_metrics_excludes_and_counts_queries_without_positives():
    runs = {"q1": ["a", "b"], "q2": ["b"], "q3": ["c", "z"], "q4": ["a"]}
    positives = {"q1": {"a"}, "q2": set(), "q3": {"z"}, "q5": ["y"]}
    score = score_task(runs, positives, ks=(1, 2), map_ks=(2,))
    # scored: q1 (hit at 1), q3 (hit at 2), q5 (no run: 0); q2 (empty) and q4 (unjudged) left out
    assert score.n_scored == 3
    assert score.n_no_positives == 2
    assert score.n_missing_run == 1
    assert score.metrics["R@1"] == pytest.approx(1 / 3)
    assert score.metrics["R@2"] == pytest.approx(2 / 3)
    assert score.metrics["mAP@2"] == pytest.approx((1 + 0.5 + 0) / 3)
    assert task_metrics(runs, positives, ks=(1, 2), map_ks=(2,)) == score.metrics
    assert list(task_metrics(runs, positives, ks=(1, 5, 10), map_ks=(5,))) == ["R@1", "R@5", "R@10", "mAP@5"]


def test_nothing_to_score_gives_nan_not_zero():
    score = score_task({"q": ["a"]}, {"q": []})
    assert score.n_scored == 0 and score.n_no_positives == 1
    assert all(math.isnan(v) for v in score.metrics.values())


def test_per_query_rows_when_asked():
    score = score_task({"q1": ["a"], "q2": ["b"]}, {"q1": ["a"], "q2": ["a"]}, ks=(1,), keep_per_query=True)
    assert score.per_query == {"q1": {"R@1": 1.0}, "q2": {"R@1": 0.0}}


def test_paper_metric_rules():
    assert paper_metric("mscoco_task0") == "R@5"
    for t in ("fashion200k_task0", "fashion200k_task3", "fashioniq_task7"):
        assert paper_metric(t) == "R@10"
    assert paper_metric("circo") == "mAP@5"
    assert paper_metric("genecis_focus_object") == "R@1"
    assert paper_metric("visdial") == "R@1" and paper_metric("vist") == "R@1"
    assert paper_metric("mtfiq") == "R@5"
    assert paper_metric("tuxpaint_t2i") == "R@5"


def test_benchmark_average_uses_each_tasks_paper_metric():
    per_task = {
        "mscoco_task0": {"R@5": 0.8, "R@10": 0.9},
        "fashion200k_task0": {"R@5": 0.2, "R@10": 0.4},
        "fashioniq_task7": {"R@5": 0.3, "R@10": 0.5},
    }
    assert benchmark_average(per_task) == pytest.approx((0.8 + 0.4 + 0.5) / 3)
    with pytest.raises(KeyError, match="R@10"):
        benchmark_average({"fashion200k_task3": {"R@5": 0.1}})


def test_the_16_task_average_matches_the_paper():
    assert (
        len(MBEIR_TASKS) == 16
        and MBEIR_TASKS[0] == "visualnews_task0"
        and MBEIR_TASKS[-1] == "infoseek_task8"
    )
    ours = PAPER_RESULTS["mbeir"]["V-Retrver-7B"]
    per_task = {t: {paper_metric(t): ours[t] / 100} for t in MBEIR_TASKS}
    assert round(100 * benchmark_average(per_task), 1) == ours["average"] == 69.7
    assert PAPER_RESULTS["mbeir"]["LamRA-7B"]["average"] == 63.7


# --------------------------------------------------------------------------- CIRCO's definitions


def circo_reference(ranked: list[str], gt: list[str], target: str, k: int) -> tuple[float, float]:
    """CIRCO's evaluation restated: with labels[i] = (ranked[i] in gt), precision at a hit is the number
    of hits so far over the rank; AP@k sums those over the first k ranks and divides by min(len(gt), k).
    Recall@k is the count of positions among the first k that equal the target image."""
    labels = [d in gt for d in ranked]
    hits, prec = 0, []
    for i, lab in enumerate(labels, 1):
        hits += lab
        prec.append(hits / i if lab else 0.0)
    ap = sum(prec[:k]) / min(len(gt), k)
    recall = float(sum(d == target for d in ranked[:k]))
    return ap, recall


def test_circo_recall_counts_only_the_target_image():
    # The target is ranked 2nd, another ground-truth image 1st: CIRCO's R@1 is 0, not 1.
    ranked = ["g1", "t", "n1", "g2", "n2"]
    gt, target = ["t", "g1", "g2"], "t"
    score = score_task({"q": ranked}, {"q": gt}, ks=(1, 2, 5), map_ks=(5,), recall_positives={"q": [target]})
    assert score.metrics["R@1"] == 0.0
    assert score.metrics["R@2"] == 1.0
    # mAP keeps every ground-truth image: (1/1 + 2/2 + 3/4) / min(3, 5)
    assert score.metrics["mAP@5"] == pytest.approx((1 + 1 + 3 / 4) / 3)
    for k in (1, 2, 5):
        ap, rec = circo_reference(ranked, gt, target, k)
        assert score_task(
            {"q": ranked}, {"q": gt}, ks=(k,), map_ks=(k,), recall_positives={"q": [target]}
        ).metrics == {
            f"R@{k}": rec,
            f"mAP@{k}": pytest.approx(ap),
        }
    # Without a target (every other benchmark) R@1 stays UniIR's "any positive".
    assert score_task({"q": ranked}, {"q": gt}, ks=(1,)).metrics["R@1"] == 1.0


def test_average_precision_equals_circos_formula_on_random_rankings():
    rng = random.Random(7)
    ids = [str(i) for i in range(40)]
    for _ in range(300):
        gt = rng.sample(ids, rng.randint(1, 12))  # more positives than k, and fewer
        ranked = rng.sample(ids, rng.randint(0, 40))  # distinct ids, as CIRCO requires
        for k in (1, 5, 10, 25, 50):
            ap, rec = circo_reference(ranked, gt, gt[0], k)
            assert average_precision_at_k(ranked, gt, k) == pytest.approx(ap)
            assert recall_at_k(ranked, [gt[0]], k) == rec


def test_expand_copies_gives_every_listed_copy_a_rank():
    # An id listed twice upstream sits twice in the upstream ranking, pushing what follows down by one.
    assert expand_copies(["a", "b", "c"], {"b": 2}) == ["a", "b", "b", "c"]
    assert expand_copies(["a"], {}) == ["a"]
    ranked = ["n", "dup", "x", "y", "p"]
    assert recall_at_k(ranked, {"p"}, 5) == 1.0
    assert recall_at_k(expand_copies(ranked, {"dup": 2}), {"p"}, 5) == 0.0
