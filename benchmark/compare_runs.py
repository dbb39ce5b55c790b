"""Two sets of our own runs, game by game: did a change of protocol move the scores (issue 8)?

    python benchmark/compare_runs.py benchmark/results/atari100k_protocol_probe/drq_oldrom_100k__* \
        --against benchmark/results/atari100k_fidelity/drq_none_100k__* --published "DrQ(eps).json"

The first runs are the variant, the runs after --against the reference (the same agent under the
current protocol, say). Only games that both sets have are compared. For each game it prints the
final scores of every run of both sets (aggregate.py's final score of a run), their means, and the
two-sided exact rank-sum test of the variant's runs against the reference's (the same test
rank_against_published.py makes against the published runs; with 4 runs against 3 the smallest
p it can give is 2/35 = 0.057), with the p-values adjusted over the games (Holm). With --published
(a JSON file {game: [final score of each published run]}) it adds the published mean and each set's
mean percentile among the published runs, and the rank-sum test of each set against them; --plot
draws each run's percentile there, game by game. --out writes the table's rows as JSON.

Runs of the same game and seed in both sets are also compared as pairs (a variant run from the
reference's seed): in how many pairs the variant scored higher (two-sided sign test), and with
--published the mean change of the run's percentile among the published runs, with the two-sided
Wilcoxon signed-rank test of those changes."""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import scipy.stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aggregate import UserError, final_score, find_run_dirs, natural_key, plt, read_run, save, table_key  # noqa: E402
from rank_against_published import holm, load_published, percentile_among, rank_sum_test  # noqa: E402


def final_scores(roots: list[str]) -> dict[str, dict]:
    """{game: {seed: final score}} of the finished runs under `roots` (one run per game and seed)."""
    scores: dict[str, dict] = {}
    for path in find_run_dirs(roots):
        run = read_run(path)
        score = final_score(run.points, None, 1) if run.finished else None
        if run.reason or score is None:
            continue
        game = scores.setdefault(run.game, {})
        if run.seed in game:
            raise UserError(f"two finished runs of {run.game} seed {run.seed} among {', '.join(roots[:2])}...: "
                            "pass the run folders of one experiment per set")
        game[run.seed] = score
    return scores


def compare(variant: dict[str, dict], reference: dict[str, dict], published: dict | None) -> list[dict]:
    games = sorted(set(variant) & set(reference), key=natural_key)
    if not games:
        raise UserError("the two sets of runs have no game in common (or no finished run)")
    rows = []
    for game in games:
        ours, base = (np.array([s[k] for k in sorted(s, key=lambda x: natural_key(str(x)))])
                      for s in (variant[game], reference[game]))
        row = {"game": game, "variant_seeds": sorted(variant[game], key=lambda x: natural_key(str(x))),
               "variant_scores": ours.tolist(), "variant_mean": float(ours.mean()),
               "reference_seeds": sorted(reference[game], key=lambda x: natural_key(str(x))),
               "reference_scores": base.tolist(), "reference_mean": float(base.mean()),
               "p_value": rank_sum_test(ours, base)}
        theirs = None if published is None else published.get(table_key(game))
        if theirs is not None:
            for name, runs in (("variant", ours), ("reference", base)):
                row[f"{name}_percentiles"] = [percentile_among(s, theirs) for s in runs]
                row[f"{name}_percentile"] = float(np.mean(row[f"{name}_percentiles"]))
                row[f"{name}_p_published"] = rank_sum_test(runs, theirs)
            row["published_mean"] = float(theirs.mean())
        rows.append(row)
    for row, adjusted in zip(rows, holm([r["p_value"] for r in rows])):
        row["holm_p_value"] = adjusted
    return rows


def paired(variant: dict[str, dict], reference: dict[str, dict], published: dict | None) -> dict:
    """The runs of the same game and seed in both sets, as pairs: see the module's docstring."""
    pairs = []
    for game in sorted(set(variant) & set(reference), key=natural_key):
        theirs = None if published is None else published.get(table_key(game))
        for seed in sorted(set(variant[game]) & set(reference[game]), key=lambda x: natural_key(str(x))):
            pair = {"game": game, "seed": seed, "variant": variant[game][seed], "reference": reference[game][seed]}
            if theirs is not None:
                pair["percentile_change"] = (percentile_among(pair["variant"], theirs)
                                             - percentile_among(pair["reference"], theirs))
            pairs.append(pair)
    differ = [p for p in pairs if p["variant"] != p["reference"]]
    higher = sum(p["variant"] > p["reference"] for p in differ)
    summary = {"pairs": pairs, "higher": higher, "differ": len(differ),
               "sign_p_value": float(scipy.stats.binomtest(higher, len(differ)).pvalue) if differ else 1.0}
    changes = [p["percentile_change"] for p in pairs if "percentile_change" in p]
    if changes:
        summary["mean_percentile_change"] = float(np.mean(changes))
        summary["wilcoxon_p_value"] = (float(scipy.stats.wilcoxon(changes).pvalue) if any(changes) else 1.0)
        summary["percentile_pairs"] = len(changes)
    return summary


def print_paired(summary: dict) -> None:
    if not summary["pairs"]:
        print("\nNo game and seed in both sets: no pairs.")
        return
    line = (f"\nPaired by game and seed: {len(summary['pairs'])} pairs; the variant scored higher in "
            f"{summary['higher']} of the {summary['differ']} that differ (sign test p = {p_cell(summary['sign_p_value'])})")
    if "mean_percentile_change" in summary:
        line += (f"; percentile among the published runs changed by {summary['mean_percentile_change']:+.3f} on "
                 f"average over {summary['percentile_pairs']} pairs (Wilcoxon signed-rank p = "
                 f"{p_cell(summary['wilcoxon_p_value'])})")
    print(line)


def p_cell(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def scores_cell(scores: list[float]) -> str:
    return ", ".join(f"{s:,.1f}" for s in scores)


def print_table(rows: list[dict]) -> None:
    with_published = any("published_mean" in r for r in rows)
    header = ["game", "variant: runs", "mean", "reference: runs", "mean", "p", "adjusted p"]
    if with_published:
        header += ["published mean", "mean percentile: variant", "reference", "p against published: variant", "reference"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for r in rows:
        cells = [r["game"], scores_cell(r["variant_scores"]), f"{r['variant_mean']:,.1f}",
                 scores_cell(r["reference_scores"]), f"{r['reference_mean']:,.1f}", p_cell(r["p_value"]),
                 p_cell(r["holm_p_value"])]
        if with_published:
            cells += ([f"{r['published_mean']:,.1f}", f"{r['variant_percentile']:.2f}", f"{r['reference_percentile']:.2f}",
                       p_cell(r["variant_p_published"]), p_cell(r["reference_p_published"])]
                      if "published_mean" in r else [""] * 5)
        print("| " + " | ".join(cells) + " |")


def plot_percentiles(rows: list[dict], names: list[str], path: str) -> None:
    """Each run's percentile among the published runs of its game, a row per game, the two sets
    side by side: if a set is the published agent, its points spread evenly over 0..1."""
    rows = [r for r in rows if "published_mean" in r][::-1]  # first game on top
    if not rows:
        raise UserError("--plot needs --published runs of the games compared")
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    for i, r in enumerate(rows):
        for key, offset, marker, color, name in (("reference", 0.12, "o", "tab:blue", names[1]),
                                                 ("variant", -0.12, "s", "tab:orange", names[0])):
            ax.plot(r[f"{key}_percentiles"], [i + offset] * len(r[f"{key}_percentiles"]), marker, color=color, ms=6,
                    alpha=0.85, label=name if i == 0 else None)
    ax.axvline(0.5, color="0.6", ls="--", lw=1)
    ax.set_yticks(range(len(rows)), [r["game"] for r in rows])
    ax.set_xlim(-0.02, 1.02)
    ax.set_xlabel("percentile among the published runs of the game (one point per run)")
    ax.legend(loc="lower left", bbox_to_anchor=(0, 1), ncol=2, fontsize="small", frameon=False)
    save(fig, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="run folders of the variant (searched recursively)")
    parser.add_argument("--against", nargs="+", required=True, help="run folders of the reference")
    parser.add_argument("--published", help="JSON {game: [final score of each published run]}")
    parser.add_argument("--out", help="JSON file of the table's rows")
    parser.add_argument("--plot", help="PNG file: each run's percentile among the published runs (needs --published)")
    parser.add_argument("--names", nargs=2, default=["variant", "reference"], metavar=("VARIANT", "REFERENCE"),
                        help="the two sets' names in the plot")
    args = parser.parse_args(argv)
    try:
        published = load_published(args.published) if args.published else None
        if args.plot and published is None:
            raise UserError("--plot draws percentiles among the published runs: pass --published too")
        variant, reference = final_scores(args.runs), final_scores(args.against)
        rows = compare(variant, reference, published)
        if args.plot:
            plot_percentiles(rows, args.names, args.plot)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_table(rows)
    print_paired(paired(variant, reference, published))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
