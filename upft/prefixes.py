"""How much k sampled solutions of one question agree in their first L tokens, and whether it pays.

The paper's case for UPFT (its Fig. 2): solution paths of one question share their first tokens
("prefix self-consistency"), and a shared prefix goes with a better chance that the rest is
right. These measures look at that on token ids (never words) for any model and any L:

- coverage: per question, the share of its traces whose first L tokens equal another trace's;
- distinct prefixes per question, and the entropy (bits) of the prefix distribution;
- majority share: the share of a question's traces that carry its most common prefix;
- accuracy of traces carrying their question's majority prefix vs the others (pooled);
- mixed share: questions where a correct and a wrong trace share an L-prefix (a prefix alone
  cannot tell them apart there).

``suggest_L`` picks the longest L at which at least ``threshold`` of the questions still have a
majority prefix carried by half or more of their traces: the longest prefix the model still
mostly agrees with itself on, which is what UPFT trains on.
"""

from __future__ import annotations

import math
from collections import Counter
from statistics import mean

Trace = tuple[tuple[int, ...], bool]  # (response token ids, correct)


def measures(traces: dict[str, list[Trace]], L: int) -> dict:
    """The measures at prefix length ``L`` over questions with at least two traces each."""
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    cov, distinct, entropy, majority, half, mixed = [], [], [], [], [], []
    maj_right = maj_n = other_right = other_n = 0
    for tr in traces.values():
        k = len(tr)
        if k < 2:
            continue
        prefixes = [ids[:L] for ids, _ in tr]
        counts = Counter(prefixes)
        top, top_n = counts.most_common(1)[0]  # ties: the prefix seen first
        cov.append(sum(counts[p] > 1 for p in prefixes) / k)
        distinct.append(len(counts))
        entropy.append(-sum(c / k * math.log2(c / k) for c in counts.values()) + 0.0)
        majority.append(top_n / k)
        half.append(top_n * 2 >= k)
        right = {p for p, (_, ok) in zip(prefixes, tr) if ok}
        wrong = {p for p, (_, ok) in zip(prefixes, tr) if not ok}
        mixed.append(bool(right & wrong))
        for p, (_, ok) in zip(prefixes, tr):
            if p == top:
                maj_n, maj_right = maj_n + 1, maj_right + ok
            else:
                other_n, other_right = other_n + 1, other_right + ok
    if not cov:
        raise ValueError("no question has two or more traces")
    return {"L": L, "n_questions": len(cov), "coverage": mean(cov), "distinct_prefixes": mean(distinct),
            "entropy_bits": mean(entropy), "majority_share": mean(majority),
            "questions_majority_half": mean(half), "mixed_share": mean(mixed),
            "accuracy_majority_prefix": 100 * maj_right / maj_n if maj_n else None,
            "accuracy_other_prefixes": 100 * other_right / other_n if other_n else None,
            "n_traces_majority": maj_n, "n_traces_other": other_n}


def suggest_L(rows: list[dict], threshold: float) -> tuple[int, str]:
    """The longest L whose ``questions_majority_half`` is at least ``threshold``, and why."""
    rows = sorted(rows, key=lambda r: r["L"])
    ok = [r for r in rows if r["questions_majority_half"] >= threshold]
    if not ok:
        r = rows[0]
        return r["L"], (f"L={r['L']}: even at the shortest L only {r['questions_majority_half']:.0%} of questions "
                        f"have a prefix shared by half their traces (threshold {threshold:.0%}); the model "
                        "agrees with itself little, so UPFT's premise is weak here")
    best = ok[-1]
    longer = [r for r in rows if r["L"] > best["L"]]
    why = (f"L={best['L']}: {best['questions_majority_half']:.0%} of questions have a prefix shared by at least half "
           f"of their traces (threshold {threshold:.0%})")
    if longer:
        why += f"; at L={longer[0]['L']} only {longer[0]['questions_majority_half']:.0%}"
    return best["L"], why
