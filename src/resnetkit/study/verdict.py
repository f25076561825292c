"""The degradation study's verdict: the paper's two comparisons, computed from final training errors."""

from __future__ import annotations

from typing import Any


def network_label(depth: int, plain: bool) -> str:
    """``plain-20`` or ``ResNet-20``, as the paper names them."""
    return f"plain-{depth}" if plain else f"ResNet-{depth}"


def degradation_verdict(networks: list[dict]) -> dict[str, Any]:
    """Compare final training errors: the deepest plain net vs the shallowest, likewise for ResNets.

    ``networks`` items need ``depth``, ``plain`` and ``final_train_error``. Returns booleans
    (``None`` with fewer than two depths) and one sentence per comparison, all from the numbers.
    """
    def pct(x: float) -> str:
        return f"{100 * x:.1f}%"

    out: dict[str, Any] = {"degradation_reproduced": None, "residual_deeper_no_worse": None, "lines": []}
    lines: list[str] = out["lines"]
    for plain in (True, False):
        fam = sorted((n for n in networks if bool(n["plain"]) == plain), key=lambda n: n["depth"])
        if len(fam) < 2:
            continue
        lo, hi = fam[0], fam[-1]
        a, b = network_label(hi["depth"], plain), network_label(lo["depth"], plain)
        e_hi, e_lo = float(hi["final_train_error"]), float(lo["final_train_error"])
        if plain:
            ok = e_hi > e_lo
            out["degradation_reproduced"] = ok
            lines.append(f"{a} ends with {'higher' if ok else 'no higher'} training error than {b} "
                         f"({pct(e_hi)} vs {pct(e_lo)}): degradation {'reproduced' if ok else 'not reproduced'}.")
        else:
            ok = e_hi <= e_lo
            out["residual_deeper_no_worse"] = ok
            tail = ("the deeper residual net trains at least as well" if ok
                    else "the deeper residual net did not catch up in this budget")
            lines.append(f"{a} ends {'at or below' if ok else 'above'} {b} in training error "
                         f"({pct(e_hi)} vs {pct(e_lo)}): {tail}.")
    for d in sorted({n["depth"] for n in networks}):
        pair = {bool(n["plain"]): n for n in networks if n["depth"] == d}
        if len(pair) == 2:
            lines.append(f"At depth {d}, ResNet vs plain final training error: "
                         f"{pct(pair[False]['final_train_error'])} vs {pct(pair[True]['final_train_error'])}; "
                         f"test error {pct(pair[False]['final_test_error'])} vs {pct(pair[True]['final_test_error'])}.")
    if len({n["depth"] for n in networks}) < 2:
        lines.insert(0, "Only one depth was trained, so there is no depth comparison.")
    out["text"] = " ".join(lines)
    return out
